"""The example clients run against a real server: the Python streaming client (on the typed client) and
`rag-grpc ingest`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs

ROOT = Path(__file__).resolve().parents[2]


async def _run(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_stream_generate_client_prints_tokens(target: str) -> None:
    code, out, err = await _run(
        sys.executable,
        "clients/stream_generate.py",
        "What is the capital of France?",
        "--target",
        target,
        "--max-tokens",
        "16",
    )
    assert code == 0, err
    assert "Paris" in out
    assert "completion_tokens=" in err and ("[stop " in err or "[length " in err)


async def test_stream_generate_client_reports_errors(target: str) -> None:
    code, _, err = await _run(
        sys.executable, "clients/stream_generate.py", "hi", "--target", target, "--max-tokens", "0"
    )
    assert code == 1
    assert "INVALID_ARGUMENT" in err and "(field: sampling.max_tokens)" in err


async def test_ingest_cli_loads_markdown_and_jsonl(
    target: str, stubs: Stubs, tmp_path: Path, isolated_tag: str
) -> None:
    (tmp_path / "notes.md").write_text(
        f"# Notes {isolated_tag}\n\nThe quokka is a small marsupial from Rottnest Island.\n"
    )
    (tmp_path / "records.jsonl").write_text(
        f'{{"id": "{isolated_tag}-j1", "text": "Basalt forms from cooling lava.", "metadata": {{"test": "{isolated_tag}"}}}}\n'
    )
    code, out, err = await _run(
        sys.executable, "-m", "rag_grpc.cli", "ingest", str(tmp_path), "--target", target
    )
    assert code == 0, err
    assert "ingested 2 documents" in out

    hits = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="Where do quokkas live?", top_k=1, filter={"source": "notes.md"})
    )
    assert "quokka" in hits.hits[0].text
    hits = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="lava", top_k=1, filter={"test": isolated_tag})
    )
    assert hits.hits[0].id == f"{isolated_tag}-j1"


async def test_ingest_cli_rejects_a_bad_jsonl_line(target: str, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "no id"}\n')
    code, _, err = await _run(
        sys.executable, "-m", "rag_grpc.cli", "ingest", str(tmp_path / "bad.jsonl"), "--target", target
    )
    assert code != 0
    assert "bad.jsonl:1" in err
