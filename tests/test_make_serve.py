"""End to end, as a user would: `make serve` brings health to SERVING and the grpcurl smoke script passes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(target: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return True
            except grpc.RpcError:
                time.sleep(0.5)
    return False


def test_make_serve_then_smoke_script_then_clean_shutdown(tmp_path: Path) -> None:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            ["make", "-s", "serve", f"PORT={port}", f"DATA_DIR={tmp_path / 'data'}"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert _wait_serving(target, timeout=180), log_path.read_text()[-3000:]
        env = {**os.environ, "GRPCURL": str(Path(sys.executable).parent / "grpcurl")}
        smoke = subprocess.run(
            [str(ROOT / "clients" / "grpcurl_smoke.sh"), target],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "SMOKE OK" in smoke.stdout
        # The demo corpus was loaded: a question about it retrieves it.
        retrieve = subprocess.run(
            [
                env["GRPCURL"],
                "-plaintext",
                "-d",
                '{"text": "Fresnel lens", "top_k": 1}',
                target,
                "rag_grpc.v1.RetrieveService/Retrieve",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "lighthouses.md" in retrieve.stdout, retrieve.stdout + retrieve.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    log_text = log_path.read_text()
    assert "shutdown_complete" in log_text, log_text[-3000:]
    # make serve persists its index; a clean stop leaves a snapshot of it.
    assert list((tmp_path / "data").glob("snapshot-*.snap")), log_text[-3000:]
