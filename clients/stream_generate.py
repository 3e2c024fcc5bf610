#!/usr/bin/env python3
"""Streams a Generate call through the typed client (rag_grpc_client) and prints text as it arrives.

.venv/bin/python clients/stream_generate.py "Which planet has the tallest volcano?" --retrieve 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from rag_grpc_client import AsyncClient, Final, RagClientError, Retrieval, Sources, TextDelta


async def stream(
    target: str, prompt: str, retrieve: int, max_tokens: int, temperature: float, timeout: float
) -> int:
    retrieval = Retrieval(top_k=retrieve) if retrieve else None
    async with AsyncClient(target) as client:
        try:
            events = client.generate(
                prompt, retrieval=retrieval, max_tokens=max_tokens, temperature=temperature, timeout=timeout
            )
            async for event in events:
                if isinstance(event, Sources):
                    for hit in event.hits:
                        print(f"[source {hit.id} score={hit.score:.3f}]", file=sys.stderr)
                elif isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, Final):
                    print(
                        f"\n[{event.finish_reason} prompt_tokens={event.usage.prompt_tokens}"
                        f" completion_tokens={event.usage.completion_tokens}"
                        f" ttft={event.timings.time_to_first_token_ms:.0f}ms total={event.timings.total_ms:.0f}ms]",
                        file=sys.stderr,
                    )
        except RagClientError as err:
            print(f"\nerror: {err.code.name}: {err.message} (field: {err.field})", file=sys.stderr)
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
