"""The one closed-loop load generator every server in the bench is measured with.

`concurrency` clients each send one request, wait for its answer, and send the next, until
`duration_s` has passed or `max_requests` have been started, whichever comes first. The runner times
every request itself, so a server's client code only has to report what came back: how many items
(texts, tokens) and, for a stream, when the first of them arrived. Requests still in flight when the
time is up are awaited for at most `drain_s`, then cancelled and not counted.

    result = await run_load(call, concurrency=64, duration_s=10, max_requests=5000)
    result.items_per_s, result.latency_p99_s, result.ttft_p50_s
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """What one request returned.

    items: texts embedded, tokens streamed, results found; whatever the throughput counts.
    first_item_at: `time.perf_counter()` when a stream's first item arrived; None for unary calls.
    """

    items: int
    first_item_at: float | None = None


@dataclass(frozen=True)
class Measurement:
    """One completed request as the runner timed it."""

    latency_s: float
    items: int
    ttft_s: float | None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    wall_s: float  # from the first request sent to the last answer received
    measurements: tuple[Measurement, ...]
    cancelled_in_flight: int  # requests still running after the drain time, not counted

    @property
    def requests(self) -> int:
        return len(self.measurements)

    @property
    def items(self) -> int:
        return sum(m.items for m in self.measurements)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else math.nan

    def _latencies(self) -> list[float]:
        return [m.latency_s for m in self.measurements]

    def _ttfts(self) -> list[float]:
        return [m.ttft_s for m in self.measurements if m.ttft_s is not None]

    @property
    def latency_p50_s(self) -> float:
        return percentile(self._latencies(), 50)

    @property
    def latency_p99_s(self) -> float:
        return percentile(self._latencies(), 99)

    @property
    def ttft_p50_s(self) -> float:
        """NaN when no request was a stream."""
        return percentile(self._ttfts(), 50)

    @property
    def ttft_p99_s(self) -> float:
        return percentile(self._ttfts(), 99)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for tables and JSON (latencies in milliseconds)."""
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "items": self.items,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": self.requests_per_s,
            "items_per_s": self.items_per_s,
            "latency_p50_ms": self.latency_p50_s * 1000.0,
            "latency_p99_ms": self.latency_p99_s * 1000.0,
            "ttft_p50_ms": self.ttft_p50_s * 1000.0,
            "ttft_p99_ms": self.ttft_p99_s * 1000.0,
            "cancelled_in_flight": self.cancelled_in_flight,
        }


async def _closed_loop(
    call: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    drain_s: float,
    first_index: int,
) -> tuple[list[Measurement], float, int]:
    measurements: list[Measurement] = []
    next_index = first_index
    last_index = first_index + max_requests
    started = time.perf_counter()
    deadline = started + duration_s
    last_done = started

    async def client() -> None:
        nonlocal next_index, last_done
        while next_index < last_index and time.perf_counter() < deadline:
            index = next_index
            next_index += 1  # no await between check and increment: the loop is single-threaded
            sent = time.perf_counter()
            sample = await call(index)
            done = time.perf_counter()
            ttft = None if sample.first_item_at is None else sample.first_item_at - sent
            measurements.append(Measurement(done - sent, sample.items, ttft))
            last_done = done

    clients = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    try:
        # A client only starts a request before the deadline, so duration_s + drain_s bounds the run.
        finished, pending = await asyncio.wait(
            clients, timeout=duration_s + drain_s, return_when=asyncio.FIRST_EXCEPTION
        )
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    for task in finished:
        task.result()  # a failed request fails the run: a benchmark must not hide errors
    # Each client still pending after the drain time is waiting on exactly one request.
    return measurements, last_done - started, len(pending)


async def run_load(
    call: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    *,
    warmup_s: float = 0.0,
    drain_s: float = 60.0,
) -> LoadResult:
    """Runs `concurrency` closed-loop clients calling `call(i)` with i = 0, 1, 2, ... (each i once).

    Bounded in time (duration_s, plus drain_s for requests already sent) and in count (max_requests).
    A warm-up phase of warmup_s (same load, same bounds on count) runs first and is not recorded;
    its calls use indices from max_requests on, so recorded requests never repeat a warm-up one.
    The first exception raised by `call` stops the run and propagates.
    """
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and duration_s > 0")
    if warmup_s > 0:
        await _closed_loop(call, concurrency, warmup_s, max_requests, drain_s, first_index=max_requests)
    measurements, wall_s, cancelled = await _closed_loop(
        call, concurrency, duration_s, max_requests, drain_s, first_index=0
    )
    return LoadResult(concurrency, wall_s, tuple(measurements), cancelled)
