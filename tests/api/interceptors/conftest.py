"""Servers with a chosen interceptor configuration, on the session's engines.

Each test starts its own RagServer (port 0) from the session settings plus its overrides, so its
keys, limits and metrics registry are its own; the engines are shared and loaded once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from rag_grpc.api.server import RagServer
from rag_grpc.app import build_interceptors
from rag_grpc.engines import Engines
from rag_grpc.limits.admission import Admission
from rag_grpc.limits.rate_limiter import build_rate_limiter
from rag_grpc.metrics import GrpcMetrics, ServiceMetrics
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from tests.conftest import Stubs

# Keys are 43 url-safe characters, like `rag-grpc new-api-key` makes.
ALICE_KEY = "alice-read-write-key-0123456789abcdefghijklm"
BOB_KEY = "bob-read-write-key-0123456789abcdefghijklmno"
READER_KEY = "reader-read-only-key-0123456789abcdefghijkl"
API_KEYS = f"alice:read-write:{ALICE_KEY},bob:read-write:{BOB_KEY},reader:read-only:{READER_KEY}"


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


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


@asynccontextmanager
async def serving(
    engines: Engines, base: Settings, *, secure_channel: grpc.ChannelCredentials | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """A server built the way `rag-grpc serve` builds one, with `overrides` on the session settings."""
    settings = with_overrides(base, **overrides)
    registry = CollectorRegistry()
    admission = Admission.for_generations(settings)
    limiter = build_rate_limiter(settings)
    interceptors = build_interceptors(settings, GrpcMetrics(registry), limiter, admission)
    service = RagService(engines, settings, metrics=ServiceMetrics(registry))
    server = RagServer(settings, service, interceptors, metrics_registry=registry)
    await server.start()
    running = RunningServer(server, settings, registry, admission)
    try:
        if secure_channel is None:
            running.channel = grpc.aio.insecure_channel(running.target)
        else:
            running.channel = grpc.aio.secure_channel(running.target, secure_channel)
        running.stubs = Stubs(running.channel)
        async with running.channel:
            yield running
    finally:
        await server.stop(0)
        if limiter is not None:
            await limiter.aclose()
