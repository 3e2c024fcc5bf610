"""The one closed-loop load generator every server in the bench is measured with, and the one percentile.

`concurrency` clients each send one request, wait for its answer, and send the next, until
`duration_s` has passed or `max_requests` have been started, whichever comes first. The runner times
every request itself, so a server's client code only has to report what came back: how many items
(texts, tokens) and, for a stream, when the first of them arrived. Requests still in flight when the
time is up are awaited for at most `drain_s`, then cancelled and not counted.

A gRPC status is a result, not a failure of the run: a call that raises `grpc.aio.AioRpcError` is
recorded under its status code (and a call may report a code itself, e.g. CANCELLED for a stream it
cancelled on purpose). Throughput, latency and time to first item count OK requests only; `codes`
counts every answered request, so a table can show the non-OK ones beside the figures they would
otherwise distort. Any other exception is a bug in the bench or a broken peer and fails the run.

    result = await run_load(call, concurrency=64, duration_s=10, max_requests=5000)
    result.items_per_s, result.latency_p99_s, result.ttft_p50_s, result.non_ok
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

OK = "OK"


@dataclass(frozen=True)
class Sample:
    """What one request returned.

    items: texts embedded, tokens streamed, results found; whatever the throughput counts.
    first_item_at: `time.perf_counter()` when a stream's first item arrived; None for unary calls.
    code: the gRPC status name; a call sets it itself only for outcomes it caused (its own cancel).
    """

    items: int
    first_item_at: float | None = None
    code: str = OK


@dataclass(frozen=True)
class Measurement:
    """One answered request as the runner timed it.

    in_flight: the most requests the shared gauge counted in flight when this one was sent or answered
    (itself included): how many callers were connected around it.
    """

    latency_s: float
    items: int
    ttft_s: float | None
    code: str = OK
    kind: str = ""
    in_flight: int = 1


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), numpy's default "linear" method; NaN for no values.

    The one percentile of the bench: every p50/p99 in every table comes from here.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class InFlight:
    """Counts requests in flight; share one between runs to count callers across them."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> int:
        self.now += 1
        self.peak = max(self.peak, self.now)
        return self.now

    def leave(self) -> None:
        self.now -= 1


def format_codes(codes: dict[str, int]) -> str:
    """Codes and counts, most frequent first ("DEADLINE_EXCEEDED 3, CANCELLED 1"), or "none"."""
    if not codes:
        return "none"
    return ", ".join(
        f"{code} {count}" for code, count in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))
    )


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    wall_s: float  # from the first request sent to the last answer received
    measurements: tuple[Measurement, ...]  # every answered request, whatever its code
    cancelled_in_flight: int  # requests still running after the drain time, not counted

    @property
    def ok(self) -> tuple[Measurement, ...]:
        return tuple(m for m in self.measurements if m.code == OK)

    @property
    def requests(self) -> int:
        """Answered requests, OK or not."""
        return len(self.measurements)

    @property
    def codes(self) -> Counter[str]:
        return Counter(m.code for m in self.measurements)

    @property
    def non_ok(self) -> dict[str, int]:
        return {code: count for code, count in self.codes.items() if code != OK}

    def codes_by_kind(self) -> dict[str, Counter[str]]:
        by_kind: dict[str, Counter[str]] = {}
        for m in self.measurements:
            by_kind.setdefault(m.kind, Counter())[m.code] += 1
        return by_kind

    @property
    def items(self) -> int:
        return sum(m.items for m in self.ok)

    @property
    def requests_per_s(self) -> float:
        """OK requests per second."""
        return len(self.ok) / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def items_per_request(self) -> float:
        """Mean items of an OK request (tokens per stream for Generate)."""
        ok = self.ok
        return self.items / len(ok) if ok else math.nan

    def _latencies(self) -> list[float]:
        return [m.latency_s for m in self.ok]

    def _ttfts(self) -> list[float]:
        return [m.ttft_s for m in self.ok if m.ttft_s is not None]

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
            "ok_requests": len(self.ok),
            "items": self.items,
            "items_per_request": self.items_per_request,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": self.requests_per_s,
            "items_per_s": self.items_per_s,
            "latency_p50_ms": self.latency_p50_s * 1000.0,
            "latency_p99_ms": self.latency_p99_s * 1000.0,
            "ttft_p50_ms": self.ttft_p50_s * 1000.0,
            "ttft_p99_ms": self.ttft_p99_s * 1000.0,
            "non_ok": self.non_ok,
            "cancelled_in_flight": self.cancelled_in_flight,
        }


async def _timed(call: Callable[[int], Awaitable[Sample]], index: int) -> Sample:
    try:
        return await call(index)
    except grpc.aio.AioRpcError as err:
        return Sample(items=0, code=err.code().name)


async def _closed_loop(
    call: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    drain_s: float,
    first_index: int,
    kind_of: Callable[[int], str],
    gauge: InFlight,
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
            at_send = gauge.enter()
            sent = time.perf_counter()
            try:
                sample = await _timed(call, index)
            finally:
                at_answer = gauge.now
                gauge.leave()
            done = time.perf_counter()
            ttft = None if sample.first_item_at is None else sample.first_item_at - sent
            measurements.append(
                Measurement(
                    done - sent, sample.items, ttft, sample.code, kind_of(index), max(at_send, at_answer)
                )
            )
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
    kind_of: Callable[[int], str] | None = None,
    in_flight: InFlight | None = None,
) -> LoadResult:
    """Runs `concurrency` closed-loop clients calling `call(i)` with i = 0, 1, 2, ... (each i once).

    Bounded in time (duration_s, plus drain_s for requests already sent) and in count (max_requests).
    A warm-up phase of warmup_s (same load, same bounds on count) runs first and is not recorded;
    its calls use indices from max_requests on, so recorded requests never repeat a warm-up one.
    kind_of(i) labels request i (a mixed load picks its call kind from i the same way), so codes can
    be counted per kind. in_flight is the gauge behind Measurement.in_flight; pass one gauge to runs
    that go on at the same time to count their callers together.
    The first exception other than a gRPC status raised by `call` stops the run and propagates.
    """
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and duration_s > 0")
    label = kind_of if kind_of is not None else (lambda _: "")
    gauge = in_flight if in_flight is not None else InFlight()
    if warmup_s > 0:
        await _closed_loop(call, concurrency, warmup_s, max_requests, drain_s, max_requests, label, gauge)
    measurements, wall_s, cancelled = await _closed_loop(
        call, concurrency, duration_s, max_requests, drain_s, 0, label, gauge
    )
    return LoadResult(concurrency, wall_s, tuple(measurements), cancelled)
