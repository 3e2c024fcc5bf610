"""The gRPC health service follows the engines: NOT_SERVING (overall and for the services that need the
engine) when one dies, SERVING again once it recovers; calls meanwhile get UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from rag_grpc.engines import Engines
from rag_grpc.engines.transformers_generator import TransformersGenerator
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import RunningServer, serving
from tests.engines.test_vllm_generator import make_generator
from tests.fakes import fake_vllm
from tests.helpers import collect, expect_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GENERATE = "rag_grpc.v1.GenerateService"
EMBED = "rag_grpc.v1.EmbedService"
HELLO = pb.GenerateRequest(prompt="Say hello.", sampling=pb.SamplingParams(max_tokens=8))


class Watch:
    """A Health/Watch stream and the statuses it has delivered so far."""

    def __init__(self, server: RunningServer, service: str) -> None:
        self.call = server.stubs.health.Watch(health_pb2.HealthCheckRequest(service=service))
        self.seen: list[int] = []

    async def until(self, status: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not self.seen or self.seen[-1] != status:
                self.seen.append((await self.call.read()).status)


@pytest.fixture
async def health_server(
    engines: Engines, settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    yield lambda generator: serving(
        Engines(engines.embedder, engines.vector_store, {generator.info.model: generator}),
        settings,
        health_check_interval_s=0.1,
    )


async def test_a_dead_transformers_scheduler_turns_health_not_serving(
    health_server: Any, generator_model_dir: Path
) -> None:
    generator = TransformersGenerator(generator_model_dir, "cpu", "doomed", max_batch_size=2)
    async with generator, health_server(generator) as s:
        overall, generate, embed = Watch(s, ""), Watch(s, GENERATE), Watch(s, EMBED)
        await overall.until(SERVING)
        await generate.until(SERVING)

        def die(*args: object) -> None:
            raise RuntimeError("injected: the scheduler thread dies")

        # The scheduler thread calls this between two steps; the request that wakes it is stranded.
        generator._next_joining = die  # type: ignore[method-assign]
        await expect_status(collect(s.stubs.generate.Generate(HELLO)), grpc.StatusCode.UNAVAILABLE)

        await overall.until(NOT_SERVING)
        await generate.until(NOT_SERVING)
        await embed.until(SERVING)  # embedding does not need the generator
        error = await expect_status(collect(s.stubs.generate.Generate(HELLO)), grpc.StatusCode.UNAVAILABLE)
        assert "not running" in (error.details() or "")
        for watch in (overall, generate, embed):
            watch.call.cancel()


async def test_a_dead_vllm_engine_turns_health_not_serving_and_back_when_it_recovers(
    health_server: Any,
) -> None:
    generator = make_generator(fake_vllm.configure(fake_vllm.word_tokenizer()))
    async with generator, health_server(generator) as s:
        overall, generate = Watch(s, ""), Watch(s, GENERATE)
        await overall.until(SERVING)
        engine = generator._engine
        engine._dead = True  # what vLLM reports once its engine-core process died
        await overall.until(NOT_SERVING)
        await generate.until(NOT_SERVING)
        await expect_status(collect(s.stubs.generate.Generate(HELLO)), grpc.StatusCode.UNAVAILABLE)
        engine._dead = False
        await overall.until(SERVING)
        await generate.until(SERVING)
        assert (await collect(s.stubs.generate.Generate(HELLO)))[-1].HasField("final")
        overall.call.cancel()
        generate.call.cancel()
