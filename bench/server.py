"""Our server for the bench: in this process, built as `rag-grpc serve` builds it, or as a child process.

Every setting a measurement depends on is passed explicitly: `bench_settings` ignores the
environment and any .env file, and the result cache is built from the settings exactly as the real
server builds it, so `cache_backend="none"` (or a TTL of 0 for one kind) is what switches a cache
off, never the way the bench happens to assemble the service.

    async with serving(bench_settings(cache_backend="none")) as served:
        ... grpc.aio.insecure_channel(served.target) ...
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from rag_grpc.app import build_server
from rag_grpc.engines import Engines, Generator, open_engines
from rag_grpc.logging import configure_logging
from rag_grpc.service import RagService
from rag_grpc.service.cache import open_result_cache
from rag_grpc.settings import Settings


def bench_settings(**overrides: Any) -> Settings:
    """Settings from defaults and `overrides` only, on a free loopback port, logging warnings only."""
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "log_level": "warning"} | overrides
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Served:
    target: str  # host:port on loopback
    settings: Settings
    engines: Engines
    service: RagService


@asynccontextmanager
async def serving(
    settings: Settings,
    *,
    with_generator: bool = True,
    generators: dict[str, Generator] | None = None,
) -> AsyncIterator[Served]:
    """Engines, result cache and server up, assembled by rag_grpc.app.build_server as `rag-grpc serve`
    does (interceptor chain, admission of generations in the service); all stopped on exit.

    generators, when given, replace the configured ones (the transport bench's instant engine).
    """
    # An explicit stream: the server's log lines only, the bench process keeps its own exception hooks.
    configure_logging(settings.observability.log_level, settings.observability.log_json, stream=sys.stderr)
    async with (
        open_engines(settings, with_generator=with_generator and generators is None) as started,
        open_result_cache(settings.cache) as cache,
    ):
        engines = (
            started if generators is None else Engines(started.embedder, started.vector_store, generators)
        )
        server = build_server(settings, engines, registry=CollectorRegistry(), cache=cache)
        port = await server.start()
        try:
            yield Served(f"127.0.0.1:{port}", settings, engines, server.service)
        finally:
            await server.stop(0)


@dataclass(frozen=True)
class ServerProcess:
    target: str
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@asynccontextmanager
async def server_process(
    options: dict[str, str | int | float | bool], log_path: Path, start_timeout_s: float = 300.0
) -> AsyncIterator[ServerProcess]:
    """`rag-grpc serve` in a child process with the full interceptor chain, on a free loopback port.

    options become `--<name>` flags (True: a bare flag). The child's environment carries no
    RAG_GRPC_* variables, so only these options and the defaults apply. Its output goes to log_path.
    """
    argv = [sys.executable, "-m", "rag_grpc.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_GRPC_")}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as workdir:
        port_file = Path(workdir) / "port"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, "--port-file", str(port_file), cwd=workdir, env=env,
                stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + start_timeout_s
            while not port_file.exists():
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rag-grpc serve did not start; see {log_path}")
                await asyncio.sleep(0.1)
            yield ServerProcess(f"127.0.0.1:{int(port_file.read_text())}", process)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    process.kill()
                    await process.wait()
