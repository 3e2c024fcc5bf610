"""`rag-grpc ask`, `search`, `status` and `ingest` as a person runs them: subprocesses against `make serve`
(with its demo corpus, in memory, on free ports), one server for the module."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_grpc_client import Client, RagClientError
from tests.conftest import free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "rag_grpc.cli"]


class Served:
    def __init__(self, target: str, metrics_url: str, log: Path) -> None:
        self.target, self.metrics_url, self.log = target, metrics_url, log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("make-serve")
    port, metrics_port = free_loopback_port(), free_loopback_port()
    # As a user types it, not as a sub-make of `make test`.
    unset = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("RAG_GRPC_")}
    log = workdir / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["make", "serve", f"PORT={port}", "DATA_DIR=", f"METRICS_PORT={metrics_port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    target = f"127.0.0.1:{port}"
    try:
        with Client(target) as client:
            deadline = time.monotonic() + 180
            while not _serving(client):
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        yield Served(target, f"http://127.0.0.1:{metrics_port}/metrics", log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _serving(client: Client) -> bool:
    try:
        return client.health(timeout=1) == "SERVING"
    except RagClientError:
        return False


def rag_grpc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_ask_streams_the_answer_with_sources_and_usage(served: Served) -> None:
    done = rag_grpc(
        "ask", "What does a Fresnel lens do?", "--top-k", "1", "--max-tokens", "12", "--target", served.target
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert re.search(r"lighthouses\.md#0\s+0\.\d{3}", done.stderr), done.stderr
    assert re.search(r"\d+ prompt \+ \d+ completion tokens", done.stderr), done.stderr
    assert "first token" in done.stderr and "total" in done.stderr


def test_search_prints_a_table_of_hits_and_errors_name_the_field(served: Served) -> None:
    done = rag_grpc("search", "Fresnel lens", "--top-k", "2", "--target", served.target)
    assert done.returncode == 0, done.stderr
    assert "lighthouses.md#0" in done.stdout and "index version" in done.stdout
    done = rag_grpc("search", "espresso", "--top-k", "1", "--json", "--target", served.target)
    assert json.loads(done.stdout)["id"] == "coffee.md#0"
    done = rag_grpc("search", "x", "--top-k", "0", "--target", served.target)
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "(field top_k)" in done.stderr


def test_status_shows_health_info_and_live_figures(served: Served) -> None:
    done = rag_grpc("status", "--target", served.target, "--metrics-url", served.metrics_url)
    assert done.returncode == 0, done.stderr
    for service in ("(overall)", "rag_grpc.v1.GenerateService", "rag_grpc.v1.DocumentService"):
        assert re.search(re.escape(service) + r"\s*│\s*SERVING", done.stdout), done.stdout
    assert "SmolLM2" in done.stdout and "all-MiniLM-L6-v2" in done.stdout
    assert re.search(r"documents\s+\d+", done.stdout) and re.search(r"calls started\s+\d+", done.stdout)


def test_ingest_shows_progress_and_resumes_without_resending(served: Served, tmp_path: Path) -> None:
    records = tmp_path / "in" / "records.jsonl"
    records.parent.mkdir()
    tag = tmp_path.name

    def write(bad: bool) -> None:
        lines = []
        for i in range(25):
            # Over the server's max_text_chars (8192): the third Ingest call is refused.
            text = "x" * 9000 if bad and i == 22 else f"Record {i} of {tag} is about basalt and granite."
            lines.append(json.dumps({"id": f"{tag}-{i}", "text": text, "metadata": {"test": tag}}))
        records.write_text("\n".join(lines) + "\n")

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    options = ("--commit-every", "10", "--batch-size", "4", "--target", served.target)
    write(bad=True)
    failed = rag_grpc("ingest", str(records.parent), *options, env=env)
    assert failed.returncode == 1
    assert "INVALID_ARGUMENT" in failed.stderr and "20 documents were acknowledged" in failed.stderr

    write(bad=False)
    resumed = rag_grpc("ingest", str(records.parent), *options, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "ingested 5 documents" in resumed.stdout and "20 already there were skipped" in resumed.stdout
    # Not a terminal: plain progress lines (every few seconds, and one at the end).
    assert re.search(r"ingest: 5/5 documents \(100%\), .* docs/s, .*ETA", resumed.stderr), resumed.stderr
    again = rag_grpc("ingest", str(records.parent), *options, env=env)
    assert again.returncode == 0 and "nothing to send" in again.stderr
    with Client(served.target) as client:
        assert len(client.retrieve("basalt", top_k=50, filter={"test": tag}).hits) == 25


def test_ingest_draws_a_progress_bar_on_a_terminal(served: Served, tmp_path: Path) -> None:
    (tmp_path / "note.md").write_text("\n\n".join(f"Paragraph {i} on tidal pools." for i in range(40)))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm", "COLUMNS": "160"}
    primary, secondary = pty.openpty()
    screen = b""
    try:
        command = [*CLI, "ingest", str(tmp_path), "--chunk-chars", "40", "--target", served.target]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=secondary)
        os.close(secondary)
        while chunk := _read(primary):  # as it is drawn: a full terminal would stop the writer
            screen += chunk
        assert process.wait(timeout=120) == 0
    finally:
        os.close(primary)
    drawn = screen.decode(errors="replace")
    assert "40/40 docs" in drawn and "docs/s" in drawn and "━" in drawn, drawn[-2000:]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the other end is closed and drained
        return b""
