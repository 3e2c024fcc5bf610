"""The bench's load generator: bounded by count and by time, each index once, errors not hidden."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import numpy as np
import pytest

from bench.load import InFlight, Sample, format_codes, percentile, run_load


async def test_stops_after_max_requests_each_index_once() -> None:
    seen: list[int] = []

    async def call(i: int) -> Sample:
        seen.append(i)
        await asyncio.sleep(0.001)
        return Sample(items=2)

    result = await run_load(call, concurrency=4, duration_s=30.0, max_requests=25)

    assert sorted(seen) == list(range(25))
    assert result.requests == 25
    assert result.items == 50
    assert result.items_per_s == pytest.approx(2 * result.requests_per_s)


async def test_stops_when_the_time_is_up() -> None:
    async def call(i: int) -> Sample:
        await asyncio.sleep(0.01)
        return Sample(items=1)

    result = await run_load(call, concurrency=2, duration_s=0.2, max_requests=1_000_000)

    assert 0 < result.requests < 1_000_000
    assert result.cancelled_in_flight == 0


async def test_requests_still_running_after_the_drain_are_cancelled_and_not_counted() -> None:
    cancelled = 0

    async def call(i: int) -> Sample:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return Sample(items=1)

    result = await run_load(call, concurrency=3, duration_s=0.05, max_requests=100, drain_s=0.1)

    assert result.requests == 0
    assert result.cancelled_in_flight == 3
    assert cancelled == 3


async def test_a_failing_request_fails_the_run_and_stops_the_other_clients() -> None:
    running: set[int] = set()

    async def call(i: int) -> Sample:
        running.add(i)
        try:
            if i == 5:
                raise RuntimeError("peer answered 500")
            await asyncio.sleep(0.01)
            return Sample(items=1)
        finally:
            running.discard(i)

    with pytest.raises(RuntimeError, match="peer answered 500"):
        await run_load(call, concurrency=4, duration_s=30.0, max_requests=10_000)
    assert running == set()


async def test_time_to_first_item_is_measured_from_the_send() -> None:
    async def call(i: int) -> Sample:
        await asyncio.sleep(0.02)
        first = time.perf_counter()
        await asyncio.sleep(0.02)
        return Sample(items=8, first_item_at=first)

    result = await run_load(call, concurrency=2, duration_s=30.0, max_requests=6)

    for m in result.measurements:
        assert m.ttft_s is not None
        assert 0.02 <= m.ttft_s < m.latency_s
    assert result.ttft_p50_s <= result.ttft_p99_s <= result.latency_p99_s
    assert result.summary()["ttft_p50_ms"] == pytest.approx(result.ttft_p50_s * 1000.0)


async def test_unary_calls_have_no_time_to_first_item() -> None:
    async def call(i: int) -> Sample:
        return Sample(items=1)

    result = await run_load(call, concurrency=1, duration_s=30.0, max_requests=3)

    assert np.isnan(result.ttft_p50_s)


async def test_warm_up_is_not_recorded_and_uses_other_indices() -> None:
    seen: list[int] = []

    async def call(i: int) -> Sample:
        seen.append(i)
        await asyncio.sleep(0.001)
        return Sample(items=1)

    result = await run_load(call, concurrency=2, duration_s=30.0, max_requests=10, warmup_s=0.05)

    warmup = [i for i in seen if i >= 10]
    assert warmup, "the warm-up sent no request"
    assert sorted(i for i in seen if i < 10) == list(range(10))
    assert result.requests == 10


def test_percentile_matches_numpy() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1.0) for _ in range(101)]
    for q in (0, 1, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert np.isnan(percentile([], 50))


async def test_bad_bounds_are_refused() -> None:
    async def call(i: int) -> Sample:
        return Sample(items=1)

    with pytest.raises(ValueError):
        await run_load(call, concurrency=0, duration_s=1.0, max_requests=1)
    with pytest.raises(ValueError):
        await run_load(call, concurrency=1, duration_s=1.0, max_requests=0)


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "test")


async def test_grpc_statuses_are_counted_by_code_and_kept_out_of_the_figures() -> None:
    async def call(i: int) -> Sample:
        await asyncio.sleep(0.001)
        if i % 4 == 1:
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
        if i % 4 == 2:
            return Sample(items=3, code="CANCELLED")  # a stream the caller cancelled on purpose
        return Sample(items=10)

    result = await run_load(
        call, concurrency=3, duration_s=30.0, max_requests=40, kind_of=lambda i: f"k{i % 2}"
    )

    assert result.requests == 40
    assert result.codes == {"OK": 20, "DEADLINE_EXCEEDED": 10, "CANCELLED": 10}
    assert result.non_ok == {"DEADLINE_EXCEEDED": 10, "CANCELLED": 10}
    assert result.items == 200  # OK requests only
    assert result.items_per_request == 10
    assert len(result._latencies()) == 20
    by_kind = result.codes_by_kind()
    assert by_kind["k1"] == {"DEADLINE_EXCEEDED": 10, "OK": 10}
    assert by_kind["k0"] == {"CANCELLED": 10, "OK": 10}
    assert result.summary()["non_ok"] == {"DEADLINE_EXCEEDED": 10, "CANCELLED": 10}


async def test_a_shared_gauge_counts_callers_of_runs_going_on_together() -> None:
    gauge = InFlight()

    async def call(i: int) -> Sample:
        await asyncio.sleep(0.02)
        return Sample(items=1)

    first, second = await asyncio.gather(
        run_load(call, concurrency=3, duration_s=0.2, max_requests=1000, in_flight=gauge),
        run_load(call, concurrency=2, duration_s=0.2, max_requests=1000, in_flight=gauge),
    )

    assert gauge.peak == 5 and gauge.now == 0
    assert max(m.in_flight for m in first.measurements + second.measurements) == 5
    assert min(m.in_flight for m in first.measurements) >= 1


def test_codes_are_formatted_most_frequent_first() -> None:
    assert format_codes({}) == "none"
    assert format_codes({"CANCELLED": 1, "DEADLINE_EXCEEDED": 3}) == "DEADLINE_EXCEEDED 3, CANCELLED 1"
