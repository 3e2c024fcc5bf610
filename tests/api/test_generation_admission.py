"""Admission over gRPC with the real generator: a full queue and a used-up caller quota are answered
at once, before anything is sent, while the admitted generation is still streaming; draining refuses
the queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, BOB_KEY, RunningServer, serving
from tests.helpers import bearer, collect, expect_status

LONG = pb.GenerateRequest(
    prompt="Write a long story about a lighthouse keeper and a storm.",
    sampling=pb.SamplingParams(max_tokens=400),
)


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def generating(
    server: RunningServer, key: str | None = None
) -> AsyncIterator[grpc.aio.UnaryStreamCall]:
    """A long generation that has produced its first message; cancelled on exit."""
    call = server.stubs.generate.Generate(LONG, metadata=bearer(key) if key else None)
    try:
        await call.read()
        yield call
    finally:
        call.cancel()


async def test_full_queue_answers_unavailable_at_once(engines: Engines, settings: Settings) -> None:
    async with serving(engines, settings, max_concurrent_generations=1, max_queued_generations=1) as s:
        async with generating(s) as running:
            queued = s.stubs.generate.Generate(LONG)
            queued_messages = asyncio.ensure_future(collect(queued))
            await _until(lambda: s.admission.waiting == 1)

            error = await expect_status(collect(s.stubs.generate.Generate(LONG)), grpc.StatusCode.UNAVAILABLE)
            assert "overloaded" in (error.details() or "")
            # A grounded call is refused before its retrieval: no Sources message precedes the status.
            grounded = s.stubs.generate.Generate(
                pb.GenerateRequest(
                    prompt="What do the documents say?", retrieval=pb.RetrievalOptions(top_k=2)
                )
            )
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for message in grounded:
                    received.append(message)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and received == []
            # Answered while the admitted call is still streaming: a refusal, not a timeout.
            assert not running.done() and s.admission.running == 1
            assert s.sample("rag_rate_limited_total", caller="anonymous", reason="queue_full") == 2
            assert s.sample("rag_generate_waiting") == 1 and s.sample("rag_generate_running") == 1
            # Other methods are not behind the generation queue.
            await s.stubs.info.Info(pb.InfoRequest())
            queued.cancel()
            await asyncio.gather(queued_messages, return_exceptions=True)
        await _until(lambda: s.admission.running == 0 and s.admission.waiting == 0)


async def test_caller_quota_answers_resource_exhausted_and_spares_others(
    engines: Engines, settings: Settings
) -> None:
    limits = {"max_concurrent_generations": 1, "max_queued_generations": 4, "max_generations_per_caller": 1}
    async with serving(engines, settings, api_keys=API_KEYS, **limits) as s:
        async with generating(s, ALICE_KEY) as running:
            error = await expect_status(
                collect(s.stubs.generate.Generate(LONG, metadata=bearer(ALICE_KEY))),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            assert "quota 1" in (error.details() or "")
            assert not running.done()
            bobs = s.stubs.generate.Generate(LONG, metadata=bearer(BOB_KEY))
            bobs_messages = asyncio.ensure_future(collect(bobs))
            await _until(lambda: s.admission.waiting == 1)
            assert s.sample("rag_rate_limited_total", caller="alice", reason="caller_quota") == 1
        # Alice's slot goes to Bob.
        await _until(lambda: s.admission.waiting == 0 and s.admission.running == 1)
        bobs.cancel()
        await asyncio.gather(bobs_messages, return_exceptions=True)
        await _until(lambda: s.admission.running == 0)


async def test_draining_refuses_queued_generations(engines: Engines, settings: Settings) -> None:
    async with (
        serving(engines, settings, max_concurrent_generations=1, max_queued_generations=2) as s,
        generating(s) as running,
    ):
        queued = asyncio.ensure_future(collect(s.stubs.generate.Generate(LONG)))
        await _until(lambda: s.admission.waiting == 1)
        s.admission.drain()
        error = await expect_status(queued, grpc.StatusCode.UNAVAILABLE)
        assert "draining" in (error.details() or "")
        assert not running.done()
