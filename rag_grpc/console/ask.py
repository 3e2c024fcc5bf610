"""`rag-grpc ask "question"`: the answer streamed to stdout as it is generated; the sources (ids and scores)
before it and the finish reason, usage and timings after it go to stderr, so `> answer.txt` keeps the text."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from rag_grpc.console.common import connect, parse_filter
from rag_grpc_client import Final, Hit, Retrieval, Sources, TextDelta


def sources_table(hits: list[Hit]) -> Table:
    table = Table("#", "id", "score", "text", title="sources", title_justify="left", box=None)
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())
        table.add_row(
            str(rank), hit.id, f"{hit.score:.3f}", snippet[:60] + ("…" if len(snippet) > 60 else "")
        )
    return table


def final_line(final: Final) -> str:
    t = final.timings
    return (
        f"{final.finish_reason} · {final.usage.prompt_tokens} prompt + {final.usage.completion_tokens} "
        f"completion tokens · retrieval {t.retrieval_ms:.0f} ms · first token {t.time_to_first_token_ms:.0f} ms"
        f" · total {t.total_ms:.0f} ms · {final.model}{' (cached)' if final.cached else ''}"
        f" · request {final.request_id}"
    )


async def ask(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False)
    retrieval = None
    if not args.no_retrieval:
        retrieval = Retrieval(top_k=args.top_k, filter=parse_filter(args.filter), min_score=args.min_score)
    async with connect(args) as client:
        stream = client.generate(
            args.question,
            retrieval=retrieval,
            model=args.model,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
        )
        async with stream:
            async for event in stream:
                if isinstance(event, Sources):
                    err.print(sources_table(event.hits) if event.hits else "sources: none found")
                elif isinstance(event, TextDelta):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                else:
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    err.print(final_line(event), style="dim")
    return 0
