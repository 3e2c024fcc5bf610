"""End to end, as a user would: `make serve` brings health to SERVING and the grpcurl smoke script passes;
its metrics endpoint answers, and every line it writes is JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

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


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file as a JSON object; the assertion names the lines that are not."""
    lines = path.read_text().splitlines()
    parsed: list[dict[str, Any]] = []
    bad: list[str] = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            parsed.append(value)
        else:
            bad.append(line)
    assert not bad, f"{len(bad)} of {len(lines)} lines of {path.name} are not JSON objects:\n" + "\n".join(
        repr(line[:200]) for line in bad[:20]
    )
    return parsed


DEFAULT_METRICS_PORT = 9464


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_make_serve_then_smoke_script_metrics_json_logs_and_clean_shutdown(tmp_path: Path) -> None:
    port = _free_port()
    # The documented default (README, Makefile's METRICS_PORT): the endpoint must answer there unasked.
    metrics_port = DEFAULT_METRICS_PORT
    assert f"METRICS_PORT ?= {metrics_port}\n" in (ROOT / "Makefile").read_text()
    assert f"127.0.0.1:{metrics_port}/metrics" in (ROOT / "README.md").read_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", metrics_port)) != 0, (
            f"port {metrics_port} is taken on this machine"
        )
    target = f"127.0.0.1:{port}"
    stdout_path, stderr_path = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    # As a user types it, not as a sub-make of `make test` (make would print "Entering directory" lines),
    # and with progress bars left to the server to turn off.
    unset = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        server = subprocess.Popen(
            [
                "make",
                "serve",
                f"PORT={port}",
                f"DATA_DIR={tmp_path / 'data'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )

    def output() -> str:
        return (stdout_path.read_text() + stderr_path.read_text())[-3000:]

    try:
        assert _wait_serving(target, timeout=180), output()
        env["GRPCURL"] = str(Path(sys.executable).parent / "grpcurl")
        smoke = subprocess.run(
            [str(ROOT / "clients" / "grpcurl_smoke.sh"), target],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
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
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "lighthouses.md" in retrieve.stdout, retrieve.stdout + retrieve.stderr
        # The metrics endpoint is on by default, on loopback, and has counted the calls above.
        metrics = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        started = {
            sample.labels["grpc_method"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "grpc_server_started_total"
        }
        assert started.get("Retrieve", 0) >= 1, metrics[:3000]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    # A log shipper reads one JSON object per line, from start-up through shutdown, on both streams.
    lines = _json_lines(stdout_path) + _json_lines(stderr_path)
    started_lines = [line for line in lines if line.get("event") == "server_started"]
    assert [line.get("metrics_port") for line in started_lines] == [metrics_port], output()
    assert "shutdown_complete" in [line.get("event") for line in lines], output()
    # make serve persists its index; a clean stop leaves a snapshot of it.
    assert list((tmp_path / "data").glob("snapshot-*.snap")), output()
