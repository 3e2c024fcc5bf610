#!/usr/bin/env python3
"""Streams a Generate call through the generated stubs and prints tokens as they arrive.

.venv/bin/python clients/stream_generate.py "Which planet has the tallest volcano?" --retrieve 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc


async def stream(
    target: str, prompt: str, retrieve: int, max_tokens: int, temperature: float, timeout: float
) -> int:
    request = pb.GenerateRequest(
        prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=temperature)
    )
    if retrieve:
        request.retrieval.top_k = retrieve
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerateServiceStub(channel)
        try:
            async for message in stub.Generate(request, timeout=timeout):
                event = message.WhichOneof("event")
                if event == "sources":
                    for hit in message.sources.hits:
                        print(f"[source {hit.id} score={hit.score:.3f}]", file=sys.stderr)
                elif event == "delta":
                    print(message.delta.text, end="", flush=True)
                else:
                    final = message.final
                    print(
                        f"\n[{pb.FinishReason.Name(final.finish_reason)} prompt_tokens={final.usage.prompt_tokens}"
                        f" completion_tokens={final.usage.completion_tokens}"
                        f" ttft={final.timings.time_to_first_token_ms:.0f}ms total={final.timings.total_ms:.0f}ms]",
                        file=sys.stderr,
                    )
        except grpc.aio.AioRpcError as err:
            print(f"\nerror: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--retrieve", type=int, default=0, help="ground the answer on this many documents")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    args = parser.parse_args()
    return asyncio.run(
        stream(args.target, args.prompt, args.retrieve, args.max_tokens, args.temperature, args.timeout)
    )


if __name__ == "__main__":
    sys.exit(main())
