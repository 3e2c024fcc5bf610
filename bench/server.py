"""Our server for the bench, in this process, built as `rag-grpc serve` builds it.

Every setting a measurement depends on is passed explicitly: `bench_settings` ignores the
environment and any .env file, and the result cache is built from the settings exactly as the real
server builds it, so `cache_backend="none"` (or a TTL of 0 for one kind) is what switches a cache
off, never the way the bench happens to assemble the service.

    async with serving(bench_settings(cache_backend="none")) as served:
        ... grpc.aio.insecure_channel(served.target) ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from rag_grpc.api.server import RagServer
from rag_grpc.app import build_interceptors
from rag_grpc.engines import Engines, open_engines
from rag_grpc.limits.admission import Admission
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
    admission: Admission | None  # None when served without interceptors


@asynccontextmanager
async def serving(
    settings: Settings, *, with_generator: bool = True, interceptors: bool = False
) -> AsyncIterator[Served]:
    """Engines, result cache and server up; all stopped on exit.

    interceptors=False serves the bare servicers (what the throughput rows measure: the interceptor
    chain has a row of its own); True adds the chain `rag-grpc serve` runs, admission control included.
    """
    configure_logging(settings.log_level, settings.log_json)
    async with (
        open_engines(settings, with_generator=with_generator) as engines,
        open_result_cache(settings) as cache,
    ):
        service = RagService(engines, settings, cache)
        admission = Admission.for_generations(settings) if interceptors else None
        chain = build_interceptors(settings, admission=admission) if admission is not None else ()
        server = RagServer(settings, service, chain)
        port = await server.start()
        try:
            yield Served(f"127.0.0.1:{port}", settings, engines, service, admission)
        finally:
            await server.stop(0)
