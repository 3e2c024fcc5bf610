"""Transport ceiling: streamed Generate messages/s through the real server, with an engine that
produces tokens instantly, so only gRPC, the servicer and the coalescing stream are measured.

Driven by the one closed loop (bench/load.py); the answer cache is off (cache_backend="none"), since
every request here is the same greedy one and would otherwise be replayed from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import grpc

from bench.load import Sample, run_load
from bench.server import bench_settings, serving
from rag_grpc.domain import EngineInfo, FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc


class InstantGenerator:
    """Yields `max_tokens` one-token chunks with no model behind them (benchmark only)."""

    info = EngineInfo(backend="instant", model="instant", device="cpu")
    control_tokens: Sequence[str] = ()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def num_running_requests(self) -> int:
        return 0

    async def check_health(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        for i in range(request.sampling.max_tokens):
            last = i == request.sampling.max_tokens - 1
            yield GenerationChunk(
                "tok ", 1, FinishReason.LENGTH if last else None, prompt_tokens=1 if last else 0
            )
            if i % 16 == 15:
                await asyncio.sleep(0)  # a real engine hands over the loop between decode steps


async def _messages_per_s(target: str, streams: int, tokens: int, duration_s: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerateServiceStub(channel)
        request = pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_tokens=tokens))
        counts = {"messages": 0}

        async def call(_: int) -> Sample:
            first = None
            items = 0
            async for message in stub.Generate(request):
                counts["messages"] += 1
                if message.HasField("delta"):
                    items += message.delta.token_count
                    first = first or time.perf_counter()
            return Sample(items=items, first_item_at=first)

        started = time.perf_counter()
        result = await run_load(call, concurrency=streams, duration_s=duration_s, max_requests=100_000)
        wall = time.perf_counter() - started
    summary = result.summary()
    return {
        "streams": streams,
        "tokens_per_s": summary["items_per_s"],
        "messages_per_s": counts["messages"] / wall,
        "tokens_per_stream": summary["items_per_request"],
        "non_ok": summary["non_ok"],
    }


async def bench_transport(duration_s: float = 5.0) -> dict[str, Any]:
    settings = bench_settings(cache_backend="none")
    async with serving(settings, generators={"instant": InstantGenerator()}) as served:
        rows = [await _messages_per_s(served.target, n, 256, duration_s) for n in (1, 32)]
    print("\nTransport: streamed Generate with an instant engine (256 tokens per stream)")
    print(f"{'streams':>8} {'tokens/s':>10} {'messages/s':>11}")
    for row in rows:
        print(f"{row['streams']:>8} {row['tokens_per_s']:>10.0f} {row['messages_per_s']:>11.0f}")
    return {"rows": rows}


if __name__ == "__main__":
    asyncio.run(bench_transport(duration_s=3.0))
