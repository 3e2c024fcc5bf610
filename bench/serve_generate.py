"""Our server's Generate under N concurrent streams, through gRPC, with the same load generator and
prompt as the transformers-serve peer, so the two rows compare like for like."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.load import Sample, run_load
from bench.peers import GENERATE_PROMPT, _generate_summary
from rag_grpc.api.server import RagServer
from rag_grpc.engines import open_engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc


async def serve_generate(
    streams: Sequence[int] = (1, 16),
    tokens: int = 64,
    duration_s: float = 30.0,
    max_requests: int = 200,
    warmup_s: float = 5.0,
) -> dict[str, Any]:
    settings = Settings(_env_file=None, port=0, log_level="warning")  # type: ignore[call-arg]
    rows: list[dict[str, Any]] = []
    async with open_engines(settings) as engines:
        server = RagServer(settings, RagService(engines, settings))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.GenerateServiceStub(channel)
                request = pb.GenerateRequest(
                    prompt=GENERATE_PROMPT, sampling=pb.SamplingParams(max_tokens=tokens)
                )

                async def call(_: int) -> Sample:
                    first, items = None, 0
                    async for message in stub.Generate(request):
                        if message.HasField("delta"):
                            items += message.delta.token_count
                            first = first or time.perf_counter()
                    return Sample(items=items, first_item_at=first)

                for count in streams:
                    result = await run_load(call, count, duration_s, max_requests, warmup_s=warmup_s)
                    rows.append(_generate_summary(result))
        finally:
            await server.stop(0)
    return {"server": "rag-grpc", "tokens": tokens, "rows": rows}
