"""Peer server lifecycle: ready on a loopback port, stopped with its whole process group, always."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.peers import free_loopback_port, running_server

# Serves 200 on /health and starts a grandchild that would outlive a plain kill of the server alone.
_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", child.pid, flush=True)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether pid is dead within within_s: a signalled process takes a moment to exit."""
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _grandchild(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("grandchild"):
            return int(line.split()[1])
    raise AssertionError(f"no grandchild in {log.read_text()!r}")


async def test_server_is_ready_then_its_process_group_is_stopped(tmp_path: Path) -> None:
    port = free_loopback_port()
    argv = [sys.executable, "-c", _SERVER, str(port)]
    async with running_server(
        "fake", argv, dict(os.environ), f"http://127.0.0.1:{port}/health", 30, tmp_path
    ):
        grandchild = _grandchild(tmp_path / "fake.log")
        assert _alive(grandchild)
    assert await _gone(grandchild)


async def test_server_is_stopped_when_the_measurement_fails(tmp_path: Path) -> None:
    port = free_loopback_port()
    argv = [sys.executable, "-c", _SERVER, str(port)]
    with pytest.raises(RuntimeError, match="measurement failed"):
        async with running_server(
            "fake", argv, dict(os.environ), f"http://127.0.0.1:{port}/health", 30, tmp_path
        ):
            grandchild = _grandchild(tmp_path / "fake.log")
            raise RuntimeError("measurement failed")
    assert await _gone(grandchild)


async def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('model directory not found'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*model directory not found"):
        async with running_server(
            "broken", argv, dict(os.environ), "http://127.0.0.1:9/health", 30, tmp_path
        ):
            pass


async def test_a_server_never_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"]
    port = free_loopback_port()  # nothing listens there
    with pytest.raises(TimeoutError, match="not ready after 1 s"):
        async with running_server(
            "silent", argv, dict(os.environ), f"http://127.0.0.1:{port}/health", 1, tmp_path
        ):
            pass
    pid = int((tmp_path / "silent.log").read_text().split()[1])
    assert await _gone(pid)
