from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from rag_grpc.domain import DeltaEvent, FinalEvent, FinishReason, GenerateEvent, Hit, SourcesEvent
from rag_grpc.service.streaming import CoalescingLimits, CoalescingStream

FINAL = FinalEvent(FinishReason.STOP, 3, 10, 0.0, 1.0, 2.0, "r", "m")


async def _events(
    n: int, produced: list[int] | None = None, fail_at: int | None = None
) -> AsyncIterator[GenerateEvent]:
    yield SourcesEvent(hits=[Hit("d", 1.0, "t", {})], index_version=1)
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("engine broke")
        if produced is not None:
            produced.append(i)
        yield DeltaEvent(text=f"t{i} ", token_count=1)
        await asyncio.sleep(0)
    yield FINAL


async def test_a_slow_reader_gets_fewer_larger_deltas_with_the_same_text() -> None:
    received: list[GenerateEvent] = []
    async with CoalescingStream(_events(100), CoalescingLimits(max_tokens_per_message=16)) as stream:
        async for event in stream:
            received.append(event)
            await asyncio.sleep(0.005)  # the transport is busy writing
    deltas = [e for e in received if isinstance(e, DeltaEvent)]
    assert isinstance(received[0], SourcesEvent) and received[-1] == FINAL
    assert "".join(d.text for d in deltas) == "".join(f"t{i} " for i in range(100))
    assert sum(d.token_count for d in deltas) == 100
    assert len(deltas) < 50
    assert max(d.token_count for d in deltas) <= 16


async def test_a_fast_reader_gets_every_delta_as_it_comes() -> None:
    async def trickle() -> AsyncIterator[GenerateEvent]:
        for i in range(5):
            await asyncio.sleep(0.01)
            yield DeltaEvent(text=str(i), token_count=1)

    async with CoalescingStream(trickle()) as stream:
        received = [event async for event in stream]
    assert [e.text for e in received if isinstance(e, DeltaEvent)] == ["0", "1", "2", "3", "4"]


async def test_a_stopped_reader_bounds_the_buffer_and_closing_stops_the_producer() -> None:
    produced: list[int] = []
    source = _events(10_000, produced)
    stream = CoalescingStream(source, CoalescingLimits(max_buffered_events=8))
    async with stream:
        await asyncio.sleep(0.05)  # nobody reads
        assert len(produced) <= 10
    count = len(produced)
    await asyncio.sleep(0.02)
    assert len(produced) == count
    # The engine stream was closed, not left suspended (that is what aborts the engine request).
    assert source.ag_frame is None


async def test_engine_errors_reach_the_reader() -> None:
    with pytest.raises(RuntimeError, match="engine broke"):
        async with CoalescingStream(_events(10, fail_at=4)) as stream:
            async for _ in stream:
                pass
