"""The Generate rows' fixed stream length: with min_tokens = max_tokens our server streams exactly that
many tokens even for a prompt the model would answer in a few (the peer's side is checked in the table,
which shows the tokens each side really streamed)."""

from __future__ import annotations

import grpc

from bench.serve_generate import fixed_length, stream_tokens
from bench.server import bench_settings, serving
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

BRIEF = "Reply with the single word yes."


async def test_min_tokens_makes_every_stream_exactly_max_tokens_long() -> None:
    async with (
        serving(bench_settings(cache_backend="none")) as served,
        grpc.aio.insecure_channel(served.target) as channel,
    ):
        stub = pb_grpc.GenerateServiceStub(channel)
        free = await stream_tokens(
            stub, pb.GenerateRequest(prompt=BRIEF, sampling=pb.SamplingParams(max_tokens=48))
        )
        fixed = await stream_tokens(stub, pb.GenerateRequest(prompt=BRIEF, sampling=fixed_length(48)))

    assert free.items < 48, "the model no longer stops early here: pick a briefer prompt"
    assert fixed.items == 48
