"""Client-side round_robin over two real servers, and health checking taking a NOT_SERVING one out."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc_client import AsyncClient
from tests.api.interceptors.conftest import serving


def info_calls(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_method") == "Info"
    )


async def test_round_robin_over_two_servers_skips_an_unhealthy_one(
    engines: Engines, settings: Settings
) -> None:
    async with serving(engines, settings) as a, serving(engines, settings) as b:
        client = AsyncClient([a.target, b.target])
        async with client:
            for _ in range(20):
                await client.info()
            assert info_calls(a.registry) >= 5 and info_calls(b.registry) >= 5
            assert info_calls(a.registry) + info_calls(b.registry) == 20

            await b.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(0.5)  # the client's health watch hears of it
            before_a, before_b = info_calls(a.registry), info_calls(b.registry)
            for _ in range(10):
                await client.info()
            assert info_calls(a.registry) - before_a == 10
            assert info_calls(b.registry) == before_b
