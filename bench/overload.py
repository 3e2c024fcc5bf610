"""Overload: Generate arriving at four times the sustainable rate against a server process with
bounded admission. Reports the rejected share, how fast rejections come back, admitted latency
against unloaded latency, and the server's peak memory. Loopback only, bounded in time and count.

The unloaded and sustained phases are the one closed loop (bench/load.py). The overload phase is not
a closed loop, on purpose: requests are sent at a fixed rate whatever the server answers (an open
loop), because a closed loop slows down with the server and so can never overload it. Every phase's
percentiles are bench/load.py's `percentile`. Requests are sampled without a seed, so none comes from
the answer cache."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from bench.load import LoadResult, Sample, percentile, run_load
from bench.server import server_process
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

OUT = Path(__file__).resolve().parent / "out"

# Sampled without a seed, so no answer comes from the cache.
REQUEST = pb.GenerateRequest(
    prompt="Name three rivers.", sampling=pb.SamplingParams(max_tokens=16, temperature=0.7)
)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one(stub: pb_grpc.GenerateServiceAsyncStub) -> Sample:
    items = 0
    async for message in stub.Generate(REQUEST, timeout=120):
        if message.HasField("delta"):
            items += message.delta.token_count
    return Sample(items=items)


async def _closed_loop(stub: pb_grpc.GenerateServiceAsyncStub, clients: int, duration_s: float) -> LoadResult:
    return await run_load(lambda _: _one(stub), clients, duration_s, max_requests=2_000)


async def _open_loop(
    stub: pb_grpc.GenerateServiceAsyncStub, rate_per_s: float, duration_s: float
) -> list[tuple[str, float]]:
    """(code, latency) of requests sent at rate_per_s for duration_s, whether or not earlier ones finished."""

    async def timed() -> tuple[str, float]:
        started = time.perf_counter()
        try:
            await _one(stub)
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        return code, time.perf_counter() - started

    tasks = []
    count = min(int(rate_per_s * duration_s), 2_000)
    started = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate_per_s - time.perf_counter()))
        tasks.append(asyncio.create_task(timed()))
    return list(await asyncio.gather(*tasks))


async def bench_overload(capacity: int = 4, queue: int = 4, phase_s: float = 15.0) -> dict[str, Any]:
    options: dict[str, str | int | float | bool] = {
        "max_concurrent_generations": capacity,
        "max_queued_generations": queue,
        "cache_backend": "none",
        "log_level": "warning",
    }
    async with server_process(options, OUT / "overload-server.log") as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.GenerateServiceStub(channel)
            await _one(stub)  # warm-up
            unloaded = await _closed_loop(stub, 1, phase_s / 3)
            sustained = await _closed_loop(stub, capacity, phase_s)
            sustainable_rate = sustained.requests_per_s
            overload = await _open_loop(stub, 4 * sustainable_rate, phase_s)
        peak_mb = _peak_rss_mb(server.pid)
        alive = server.alive
    admitted = [latency for code, latency in overload if code == "OK"]
    rejected = [latency for code, latency in overload if code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")]
    other = sorted({code for code, _ in overload} - {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})
    result = {
        "capacity": capacity,
        "queue": queue,
        "sustainable_rate_per_s": sustainable_rate,
        "offered_rate_per_s": 4 * sustainable_rate,
        "requests": len(overload),
        "rejected_share": len(rejected) / max(len(overload), 1),
        "rejection_p99_ms": percentile(rejected, 99) * 1000,
        "admitted_p99_ms": percentile(admitted, 99) * 1000,
        "unloaded_p99_ms": unloaded.latency_p99_s * 1000,
        "unloaded_p50_ms": unloaded.latency_p50_s * 1000,
        "other_codes": other,
        "codes": dict(Counter(code for code, _ in overload)),
        "closed_loop_non_ok": {"unloaded": unloaded.non_ok, "sustained": sustained.non_ok},
        "server_alive_after": alive,
        "server_peak_rss_mb": peak_mb,
    }
    print("\nOverload: Generate (16 tokens) offered at 4x the sustainable rate")
    for key, value in result.items():
        print(f"  {key:>24}: {value:.1f}" if isinstance(value, float) else f"  {key:>24}: {value}")
    return result


if __name__ == "__main__":
    asyncio.run(bench_overload(phase_s=6.0))
