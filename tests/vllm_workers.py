"""Real vLLM-for-CPU workers as subprocesses on free loopback ports: vLLM's gRPC server and its
OpenAI-compatible server, each serving the bundled SmolLM2 (converted directory).

Start-up is paid once per session and overlaps the other tests: `launch` returns at once and
`wait_ready` blocks until the worker answers. Eager mode (no compile) starts in ~20 s on 2 cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc
import httpx

SERVED_MODEL = "SmolLM2-135M-Instruct"
Protocol = Literal["grpc", "openai"]


def engine_flags(model_dir: Path) -> list[str]:
    """What every test engine runs with: float32 (vLLM for CPU's bfloat16 answers SmolLM2's facts
    wrongly), eager, a small KV cache so several engines fit next to each other."""
    return [
        "--model", str(model_dir),
        "--served-model-name", SERVED_MODEL,
        "--max-model-len", "2048",
        "--dtype", "float32",
        "--enforce-eager",
        "--kv-cache-memory-bytes", str(512 * 1024 * 1024),
    ]  # fmt: skip


@dataclass
class VllmWorker:
    protocol: Protocol
    port: int
    model_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.protocol == "grpc":
            return f"grpc://127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self) -> None:
        module = (
            "vllm.entrypoints.launchers.grpc_server"
            if self.protocol == "grpc"
            else "vllm.entrypoints.openai.api_server"
        )
        command = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)]
        command += engine_flags(self.model_dir)
        if self.protocol == "openai":
            command.append("--enable-request-id-headers")
        env = {**os.environ, "SMG_VLLM_SERVICER_WARMUP": "off", "VLLM_NO_USAGE_STATS": "1"}
        with self.log_path.open("ab") as log:
            # Its own process group: the engine core and worker are children, and a kill must reach them.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM {self.protocol} worker exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vLLM {self.protocol} worker not ready in {timeout_s} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def _answers(self) -> bool:
        if self.protocol == "openai":
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def kill(self) -> None:
        """SIGKILL to the whole group: the worker dies as a crash would take it, mid-answer."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Fleet:
    """Two workers per protocol: enough for a pool to lose one and go on with the other."""

    grpc: list[VllmWorker]
    openai: list[VllmWorker]

    @classmethod
    def launch(cls, model_dir: Path, log_dir: Path, free_port: Callable[[], int]) -> Fleet:
        log_dir.mkdir(parents=True, exist_ok=True)

        def worker(protocol: Protocol, n: int) -> VllmWorker:
            return VllmWorker(protocol, free_port(), model_dir, log_dir / f"vllm-{protocol}-{n}.log")

        fleet = cls([worker("grpc", 0), worker("grpc", 1)], [worker("openai", 0), worker("openai", 1)])
        for w in fleet.all:
            w.launch()
        return fleet

    @property
    def all(self) -> list[VllmWorker]:
        return [*self.grpc, *self.openai]

    def of(self, protocol: Protocol) -> list[VllmWorker]:
        return self.grpc if protocol == "grpc" else self.openai

    def wait_ready(self) -> None:
        for w in self.all:
            w.wait_ready()

    def stop(self) -> None:
        for w in self.all:
            w.stop()
