"""Servers with a chosen interceptor configuration, on the session's engines.

Each test starts its own RagServer (port 0) from the session settings plus its overrides, so its
keys, limits and metrics registry are its own; the engines are shared and loaded once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from rag_grpc.api.server import RagServer
from rag_grpc.app import MeteredStats, build_server
from rag_grpc.engines import Engines
from rag_grpc.engines.factory import with_embed_batching, with_search_batching
from rag_grpc.limits.admission import Admission
from rag_grpc.limits.rate_limiter import build_rate_limiter
from rag_grpc.metrics import ServiceMetrics
from rag_grpc.service.cache import open_result_cache
from rag_grpc.settings import Settings
from rag_grpc.tracing import Tracing
from tests.conftest import Stubs

# Keys are 43 url-safe characters, like `rag-grpc new-api-key` makes.
ALICE_KEY = "alice-read-write-key-0123456789abcdefghijklm"
BOB_KEY = "bob-read-write-key-0123456789abcdefghijklmno"
READER_KEY = "reader-read-only-key-0123456789abcdefghijkl"
API_KEYS = f"alice:read-write:{ALICE_KEY},bob:read-write:{BOB_KEY},reader:read-only:{READER_KEY}"


@dataclass
class RunningServer:
    server: RagServer
    settings: Settings
    registry: CollectorRegistry
    admission: Admission
    channel: grpc.aio.Channel = field(init=False)
    stubs: Stubs = field(init=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's value from this server's registry (0 when it was never recorded)."""
        return self.registry.get_sample_value(name, labels) or 0.0


async def _metered_engines(
    engines: Engines, settings: Settings, metrics: ServiceMetrics, stack: AsyncExitStack
) -> Engines:
    """The session's models behind micro-batchers of our own (left when `stack` closes), whose batch
    sizes go to `metrics`, as open_engines sets them up in `rag-grpc serve`."""
    stats = MeteredStats.into(metrics)
    embedder = with_embed_batching(settings.engines, engines.embedder.inner, stats.embed)  # type: ignore[attr-defined]
    store = with_search_batching(settings.engines, engines.vector_store.inner, stats.search)  # type: ignore[attr-defined]
    return Engines(
        embedder=await stack.enter_async_context(embedder),
        vector_store=await stack.enter_async_context(store),
        generators=engines.generators,
    )


@asynccontextmanager
async def serving(
    engines: Engines,
    base: Settings,
    *,
    secure_channel: grpc.ChannelCredentials | None = None,
    full_service: bool = False,
    tracing: Tracing | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    """A server built the way `rag-grpc serve` builds one, with `overrides` on the session settings.
    `full_service` adds what serve() adds around the service: micro-batchers and the result cache,
    with their metrics. `tracing`: spans go there (traces are off without it)."""
    settings = base.with_overrides(**overrides)
    registry = CollectorRegistry()
    limiter = build_rate_limiter(settings.limits)
    service_metrics = ServiceMetrics(registry)
    async with AsyncExitStack() as stack:
        cache = None
        if full_service:
            engines = await _metered_engines(engines, settings, service_metrics, stack)
            cache = await stack.enter_async_context(
                open_result_cache(settings.cache, MeteredStats.into(service_metrics).cache)
            )
        server = build_server(
            settings,
            engines,
            registry=registry,
            service_metrics=service_metrics,
            cache=cache,
            limiter=limiter,
            tracing=tracing,
        )
        await server.start()
        running = RunningServer(server, settings, registry, server.service.admission)
        try:
            async with _channel(running, secure_channel):
                yield running
        finally:
            await server.stop(0)
            if limiter is not None:
                await limiter.aclose()


@asynccontextmanager
async def _channel(
    running: RunningServer, credentials: grpc.ChannelCredentials | None
) -> AsyncIterator[None]:
    if credentials is None:
        running.channel = grpc.aio.insecure_channel(running.target)
    else:
        running.channel = grpc.aio.secure_channel(running.target, credentials)
    running.stubs = Stubs(running.channel)
    async with running.channel:
        yield
