"""Latency cost of the interceptor chain on a unary call, side by side in one run.

A child process loads the engines once and serves the same RagService twice on loopback: "bare"
(RagServer as `make serve` runs it: the chain every server has, i.e. the JSON request log written to
/dev/null, metrics, error mapping, drain, deadline ceiling and request decoding, without keys or
rate limits) and "full" (the same plus an API key and an in-memory rate limit on every method),
plus "full+redis" when a Redis URL is given. Since the consolidation (api/interceptors/chain.py) a
RagServer cannot be built without its always-on part, so the difference measured is what auth and
rate limiting add; the always-on part is in both. This process calls Info (no
engine work, so transport and interceptors dominate) through the one closed loop (bench/load.py) with
a single client, alternating the servers in rounds so that noise from the shared machine falls on
both alike. Percentiles are bench/load.py's; non-OK answers are counted, not timed.

    python -m bench.interceptor_overhead [--calls 3000] [--redis-url redis://127.0.0.1:6379/0]

`run()` returns the numbers as a dict; the goal is at most 0.3 ms added at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench.load import LoadResult, Sample, percentile, run_load

BENCH_KEY = "bench-key-0123456789abcdefghijklmnopqrstuv"
GOAL_P50_MS = 0.3


def _full_overrides(redis_url: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "api_keys": f"bench:read-write:{BENCH_KEY}",
        # Generous enough never to refuse, so every call runs the whole limiter path.
        "rate_limits": {"*": {"requests_per_s": 1e9, "tokens_per_s": 1e12}},
    }
    if redis_url:
        overrides |= {"rate_limit_backend": "redis", "rate_limit_redis_url": redis_url}
    return overrides


async def _serve(conn: Connection, redis_url: str | None) -> None:
    from prometheus_client import CollectorRegistry

    from rag_grpc.api.server import RagServer
    from rag_grpc.engines import open_engines
    from rag_grpc.limits.rate_limiter import build_rate_limiter
    from rag_grpc.logging import configure_logging
    from rag_grpc.metrics import GrpcMetrics
    from rag_grpc.service import RagService
    from rag_grpc.settings import Settings

    devnull = open(os.devnull, "w")  # noqa: SIM115 - opened once, lives as long as the process
    configure_logging("info", json=True, stream=devnull)
    base = Settings(_env_file=None, host="127.0.0.1", port=0)  # type: ignore[call-arg]
    variants = {"full": _full_overrides(None)}
    if redis_url:
        variants["full+redis"] = _full_overrides(redis_url)
    async with open_engines(base) as engines:
        service = RagService(engines, base)
        servers = {"bare": RagServer(base, service)}
        limiters = []
        for name, overrides in variants.items():
            settings = Settings(_env_file=None, host="127.0.0.1", port=0, **overrides)  # type: ignore[call-arg]
            limiter = build_rate_limiter(settings.limits)
            limiters.append(limiter)
            metrics = GrpcMetrics(CollectorRegistry())
            servers[name] = RagServer(settings, service, grpc_metrics=metrics, limiter=limiter)
        ports = {name: await server.start() for name, server in servers.items()}
        conn.send(ports)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        for server in servers.values():
            await server.stop(0)
        for limiter in limiters:
            if limiter is not None:
                await limiter.aclose()


def _server_main(conn: Connection, redis_url: str | None) -> None:
    asyncio.run(_serve(conn, redis_url))


def _summary(latencies_ms: list[float], codes: Counter[str]) -> dict[str, Any]:
    return {
        "calls": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": statistics.fmean(latencies_ms) if latencies_ms else math.nan,
        "non_ok": dict(codes),
    }


async def _measure(
    ports: dict[str, int], calls: int, warmup: int, rounds: int, deadline: float
) -> tuple[dict[str, list[float]], dict[str, Counter[str]]]:
    """Info latencies (ms) of OK calls and the non-OK codes, per server."""
    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {BENCH_KEY}"),)
    request = pb.InfoRequest()
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
    try:

        def caller(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[Sample]]:
            stub = pb_grpc.InfoServiceStub(channel)

            async def call(_: int) -> Sample:
                await stub.Info(request, metadata=metadata, timeout=10)
                return Sample(items=1)

            return call

        calls_of = {name: caller(channel) for name, channel in channels.items()}

        async def one_client(name: str, count: int) -> LoadResult:
            time_left = max(1.0, deadline - time.monotonic())
            return await run_load(calls_of[name], 1, time_left, count, drain_s=10.0)

        for name in calls_of:
            await one_client(name, warmup)
        latencies: dict[str, list[float]] = {name: [] for name in calls_of}
        codes: dict[str, Counter[str]] = {name: Counter() for name in calls_of}
        per_round = max(1, calls // rounds)
        names = list(calls_of)
        for number in range(rounds):
            # Alternate which server goes first, so neither always follows the other's warm caches.
            for name in names if number % 2 == 0 else reversed(names):
                result = await one_client(name, per_round)
                latencies[name].extend(m.latency_s * 1000.0 for m in result.ok)
                codes[name].update(result.non_ok)
            if time.monotonic() > deadline:
                break
        return latencies, codes
    finally:
        for channel in channels.values():
            await channel.close()


def run(
    calls: int = 3000,
    warmup: int = 300,
    rounds: int = 10,
    time_limit_s: float = 180.0,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Measures Info on each server `calls` times (fewer if `time_limit_s` runs out); prints a table and
    returns {"variants": {name: {p50_ms, p90_ms, p99_ms, mean_ms, calls}}, "overhead_p50_ms", ...}."""
    deadline = time.monotonic() + time_limit_s
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_server_main, args=(child, redis_url), daemon=True)
    server.start()
    try:
        if not parent.poll(timeout=max(1.0, deadline - time.monotonic())):
            raise TimeoutError("bench server did not start in time")
        ports = parent.recv()
        latencies, codes = asyncio.run(_measure(ports, calls, warmup, rounds, deadline))
    finally:
        parent.send("stop")
        server.join(timeout=30)
        if server.is_alive():
            server.kill()
    variants = {name: _summary(samples, codes[name]) for name, samples in latencies.items()}
    bare = variants["bare"]
    result: dict[str, Any] = {"rpc": "InfoService/Info", "variants": variants}
    for name, numbers in variants.items():
        if name == "bare":
            continue
        suffix = "" if name == "full" else "_" + name.replace("full+", "")
        result[f"overhead_p50_ms{suffix}"] = numbers["p50_ms"] - bare["p50_ms"]
        result[f"overhead_p99_ms{suffix}"] = numbers["p99_ms"] - bare["p99_ms"]
    result["goal_p50_ms"] = GOAL_P50_MS
    result["meets_goal"] = result["overhead_p50_ms"] <= GOAL_P50_MS
    _print_table(result)
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'server':<12} {'calls':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, n in result["variants"].items():
        print(
            f"{name:<12} {n['calls']:>6} {n['p50_ms']:>8.3f} {n['p90_ms']:>8.3f} {n['p99_ms']:>8.3f} {n['mean_ms']:>8.3f}"
        )
    print(
        f"full chain adds {result['overhead_p50_ms']:.3f} ms at p50 and {result['overhead_p99_ms']:.3f} ms at p99 "
        f"(goal: <= {GOAL_P50_MS} ms at p50: {'met' if result['meets_goal'] else 'NOT met'})"
    )
    if "overhead_p50_ms_redis" in result:
        print(
            f"with the Redis limiter: {result['overhead_p50_ms_redis']:.3f} ms at p50, "
            f"{result['overhead_p99_ms_redis']:.3f} ms at p99"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per server")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured calls per server first")
    parser.add_argument("--rounds", type=int, default=10, help="alternations between the servers")
    parser.add_argument("--time-limit-s", type=float, default=180.0, help="stop measuring after this long")
    parser.add_argument("--redis-url", default=None, help="also measure the chain with the Redis limiter")
    args = parser.parse_args()
    run(args.calls, args.warmup, args.rounds, args.time_limit_s, args.redis_url)


if __name__ == "__main__":
    main()
