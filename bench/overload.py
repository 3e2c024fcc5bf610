"""Overload: Generate arriving at four times the sustainable rate against a server process with
bounded admission. Reports the rejected share, how fast rejections come back, admitted latency
against unloaded latency, and the server's peak memory. Loopback only, bounded in time and count."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

# Sampled without a seed, so no answer comes from the cache.
REQUEST = pb.GenerateRequest(
    prompt="Name three rivers.", sampling=pb.SamplingParams(max_tokens=16, temperature=0.7)
)


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one(stub: pb_grpc.GenerateServiceStub) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        async for _ in stub.Generate(REQUEST, timeout=120):
            pass
        code = "OK"
    except grpc.aio.AioRpcError as err:
        code = err.code().name
    return code, time.perf_counter() - started


async def _closed_loop(
    stub: pb_grpc.GenerateServiceStub, clients: int, duration_s: float
) -> list[tuple[str, float]]:
    results: list[tuple[str, float]] = []
    stop_at = time.perf_counter() + duration_s

    async def client() -> None:
        while time.perf_counter() < stop_at and len(results) < 2_000:
            results.append(await _one(stub))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


async def _open_loop(
    stub: pb_grpc.GenerateServiceStub, rate_per_s: float, duration_s: float
) -> list[tuple[str, float]]:
    tasks = []
    count = min(int(rate_per_s * duration_s), 2_000)
    started = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate_per_s - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(stub)))
    return list(await asyncio.gather(*tasks))


async def bench_overload(capacity: int = 4, queue: int = 4, phase_s: float = 15.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        port_file = Path(workdir) / "port"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_GRPC_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "rag_grpc.cli", "serve", "--port", "0", "--port-file", str(port_file),
             "--max-concurrent-generations", str(capacity), "--max-queued-generations", str(queue),
             "--log-level", "warning"],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise RuntimeError("server exited during start")
                await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as channel:
                stub = pb_grpc.GenerateServiceStub(channel)
                await _one(stub)  # warm-up
                unloaded = [latency for _, latency in await _closed_loop(stub, 1, phase_s / 3)]
                sustained = await _closed_loop(stub, capacity, phase_s)
                sustainable_rate = len(sustained) / phase_s
                overload = await _open_loop(stub, 4 * sustainable_rate, phase_s)
            peak_mb = _peak_rss_mb(server.pid)
            alive = server.poll() is None
        finally:
            server.terminate()
            server.wait(60)
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
        "rejection_p99_ms": _p99(rejected) * 1000,
        "admitted_p99_ms": _p99(admitted) * 1000,
        "unloaded_p99_ms": _p99(unloaded) * 1000,
        "unloaded_p50_ms": statistics.median(unloaded) * 1000,
        "other_codes": other,
        "server_alive_after": alive,
        "server_peak_rss_mb": peak_mb,
    }
    print("\nOverload: Generate (16 tokens) offered at 4x the sustainable rate")
    for key, value in result.items():
        print(f"  {key:>24}: {value:.1f}" if isinstance(value, float) else f"  {key:>24}: {value}")
    return result


if __name__ == "__main__":
    asyncio.run(bench_overload(phase_s=6.0))
