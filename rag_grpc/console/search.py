"""`rag-grpc search "query"`: the best matching documents as a table (or JSON lines with --json)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from rag_grpc.console.common import connect, parse_filter

# Enough of each hit's text to recognize it; --json prints it whole.
SNIPPET_CHARS = 160


async def search(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        found = await client.retrieve(
            args.query, top_k=args.top_k, filter=parse_filter(args.filter), min_score=args.min_score
        )
    if args.json:
        for hit in found.hits:
            print(json.dumps({"id": hit.id, "score": hit.score, "text": hit.text, "metadata": hit.metadata}))
        return 0
    table = Table(caption=f"index version {found.index_version}")
    for name in ("#", "score", "id"):
        table.add_column(name, no_wrap=True)
    table.add_column("text", ratio=3)
    table.add_column("metadata", ratio=1)
    for rank, hit in enumerate(found.hits, start=1):
        metadata = "\n".join(f"{k}={v}" for k, v in sorted(hit.metadata.items()))
        table.add_row(str(rank), f"{hit.score:.3f}", hit.id, _snippet(hit.text), metadata)
    Console(highlight=False).print(table if found.hits else "no hits")
    return 0


def _snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
