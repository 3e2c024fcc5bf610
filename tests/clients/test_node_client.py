"""The TypeScript client (clients/node) against a real server: its node test suite runs with node's own
test runner, after a strict type check. `make test` installs the npm packages (npm ci from the lockfile)
and generates the stubs with buf before pytest runs."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import RunningServer, serving

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
BIN = NODE_CLIENT / "node_modules" / ".bin"

# Two documents for the grounded calls, tagged so that the node test retrieves only these.
DOCUMENTS = {
    "lighthouse": "The Cordouan lighthouse at the mouth of the Gironde was the first to use a Fresnel lens, "
    "in 1823.",
    "coffee": "Arabica coffee grows best at altitudes between 1000 and 2000 metres.",
}


async def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=NODE_CLIENT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not installed (Node.js 20 or later)")
    if not (BIN / "tsx").exists() or not (NODE_CLIENT / "src" / "gen").is_dir():
        pytest.fail("clients/node is not set up: `make node-client` runs npm ci and buf generate")
    return binary


async def _store_documents(server: RunningServer, tag: str) -> None:
    documents = [
        pb.Document(id=f"{tag}-{name}", text=text, metadata={"test": tag}) for name, text in DOCUMENTS.items()
    ]
    await server.stubs.documents.Upsert(pb.UpsertRequest(documents=documents))


async def test_the_typescript_client_passes_its_tests_against_a_real_server(
    node: str, engines: Engines, settings: Settings, isolated_tag: str
) -> None:
    code, out = await _run(str(BIN / "tsc"), "--noEmit", "-p", ".")
    assert code == 0, out
    async with serving(engines, settings) as server:
        await _store_documents(server, isolated_tag)
        env = {"RAG_GRPC_TARGET": server.target, "RAG_GRPC_TEST_TAG": isolated_tag}
        code, out = await _run(node, "--import", "tsx", "--test", "test/client.test.ts", env=env)
        assert code == 0, out
        assert "# fail 0" in out, out
        # Both mid-stream cancellations reached the server: their generations ended as "abort" (the caller
        # left), and no generation still holds a slot.
        model = engines.default_generator.info.model
        for _ in range(100):
            if server.sample("rag_generate_finished_total", model=model, finish_reason="abort") >= 2:
                break
            await asyncio.sleep(0.05)
        assert server.sample("rag_generate_finished_total", model=model, finish_reason="abort") == 2
        assert server.admission.running == 0
