"""The client distribution installs and works without the server's dependencies: a fresh virtual
environment, `pip install` of a copy of clients/python (with the proto beside it, as in an sdist), then a
real call against the session's server from that environment."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the client may pull in: gRPC, protobuf and their own small dependencies.
ALLOWED = {
    "rag-grpc-client",
    "grpcio",
    "grpcio-status",
    "grpcio-health-checking",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",
    "pip",
    "setuptools",
}

PROBE = """
import importlib.util, json, sys
from rag_grpc_client import Client
with Client(sys.argv[1]) as client:
    info = client.info()
heavy = [name for name in ("torch", "numpy", "transformers", "faiss", "rag_grpc") if importlib.util.find_spec(name)]
print(json.dumps({"version": info.version, "heavy": heavy}))
"""


async def _run(*args: str, cwd: Path, timeout: float = 300) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=cwd
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode == 0, out.decode()[-3000:]
    return out.decode()


@pytest.mark.slow
async def test_fresh_venv_installs_the_client_without_torch(target: str, tmp_path: Path) -> None:
    source = tmp_path / "rag-grpc-client"
    shutil.copytree(
        ROOT / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "*_pb2.py", "*_pb2.pyi", "__pycache__"),
    )
    shutil.copytree(ROOT / "protos", source / "protos")
    # Run from tmp_path, where the checkout's rag_grpc package is not importable by accident.
    venv = tmp_path / "venv"
    await _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    await _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source), cwd=tmp_path)

    listed = json.loads(
        await _run(
            python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check", cwd=tmp_path
        )
    )
    installed = {entry["name"].lower().replace("_", "-") for entry in listed}
    assert installed <= ALLOWED, installed - ALLOWED

    probe = json.loads((await _run(python, "-c", PROBE, target, cwd=tmp_path)).splitlines()[-1])
    assert probe["version"] and probe["heavy"] == []
