"""Our server's Generate under N concurrent streams, through gRPC, with the same load generator, prompt
and stream length as the transformers-serve peer, so the two rows compare like for like.

Every stream is exactly `tokens` long: the request sets min_tokens = max_tokens, so the engine
suppresses end-of-sequence until the last token (the peer is told to ignore EOS the same way, see
bench/peers.py), and the table shows the mean tokens per stream of both sides. The row measures
compute, so the answer cache is off explicitly (cache_backend="none"): at temperature 0 every one of
these identical requests would otherwise be replayed from it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.load import Sample, run_load
from bench.peers import GENERATE_PROMPT, generate_summary
from bench.server import bench_settings, serving
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc


def fixed_length(tokens: int, **sampling: Any) -> pb.SamplingParams:
    """SamplingParams for a stream of exactly `tokens` tokens (no stop strings, EOS suppressed)."""
    return pb.SamplingParams(max_tokens=tokens, min_tokens=tokens, **sampling)


async def stream_tokens(stub: pb_grpc.GenerateServiceAsyncStub, request: pb.GenerateRequest) -> Sample:
    """Reads one Generate stream: tokens from the deltas, and when the first delta arrived."""
    first, items = None, 0
    async for message in stub.Generate(request):
        if message.HasField("delta"):
            items += message.delta.token_count
            first = first or time.perf_counter()
    return Sample(items=items, first_item_at=first)


async def serve_generate(
    streams: Sequence[int] = (1, 16),
    tokens: int = 64,
    duration_s: float = 30.0,
    max_requests: int = 200,
    warmup_s: float = 5.0,
) -> dict[str, Any]:
    settings = bench_settings(cache_backend="none")
    rows: list[dict[str, Any]] = []
    async with serving(settings) as served, grpc.aio.insecure_channel(served.target) as channel:
        stub = pb_grpc.GenerateServiceStub(channel)
        request = pb.GenerateRequest(prompt=GENERATE_PROMPT, sampling=fixed_length(tokens, temperature=0.0))

        async def call(_: int) -> Sample:
            return await stream_tokens(stub, request)

        for count in streams:
            result = await run_load(call, count, duration_s, max_requests, warmup_s=warmup_s)
            rows.append(generate_summary(result))
    return {
        "server": "rag-grpc",
        "tokens": tokens,
        "cache_backend": settings.cache.cache_backend,
        "rows": rows,
    }
