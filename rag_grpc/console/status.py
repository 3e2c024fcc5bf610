"""`rag-grpc status`: health of each service, what Info reports, and a few live figures (round trip, index
size and version; with --metrics-url also calls, errors, generations running and queued, cache hits)."""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from rag_grpc.console.common import connect
from rag_grpc.v1 import rag_pb2 as pb

SERVICES = ["", *(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())]


def _scrape(url: str) -> dict[str, float]:
    """Sample name (with a label where it matters) to value, summed over the other labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
            # Calls the server failed; a caller cancelling (as client-side health checks do) is no failure.
            failed = sample.labels.get("grpc_code") not in {"OK", "CANCELLED"}
            if sample.name == "grpc_server_handled_total" and failed:
                totals["errors"] += sample.value
    return totals


def _live_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    hits, misses = metrics.get("rag_cache_hits_total", 0.0), metrics.get("rag_cache_misses_total", 0.0)
    ratio = f"{hits / (hits + misses):.0%}" if hits + misses else "-"
    return [
        ("calls started", f"{metrics.get('grpc_server_started_total', 0):.0f}"),
        ("calls failed", f"{metrics.get('errors', 0):.0f}"),
        ("generations running", f"{metrics.get('rag_generate_running', 0):.0f}"),
        ("generations queued", f"{metrics.get('rag_generate_waiting', 0):.0f}"),
        ("tokens generated", f"{metrics.get('rag_generate_generation_tokens_total', 0):.0f}"),
        ("cache hit ratio", ratio),
    ]


async def status(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    async with connect(args) as client:
        began = time.perf_counter()
        info = await client.info()
        info_ms = (time.perf_counter() - began) * 1000
        health = await asyncio.gather(*(client.health(service) for service in SERVICES))
    metrics = await asyncio.to_thread(_scrape, args.metrics_url) if args.metrics_url else None

    services = Table(
        "service", "health", title=f"{args.target}  (rag-grpc {info.version})", title_justify="left"
    )
    for service, state in zip(SERVICES, health, strict=True):
        services.add_row(service or "(overall)", f"[{'green' if state == 'SERVING' else 'red'}]{state}[/]")
    out.print(services)

    e, i = info.embedder, info.index
    about = Table("", "", show_header=False, box=None)
    about.add_row(
        "embedder", f"{e.model} ({e.dimension} dims, {e.max_input_tokens} tokens, {e.backend} on {e.device})"
    )
    for g in info.generators:
        about.add_row("generator", f"{g.model} ({g.backend} on {g.device})")
    about.add_row("index", f"{i.backend} on {i.device}, {i.dimension} dims")
    about.add_row("limits", ", ".join(f"{name} {value}" for name, value in info.limits.items()))
    out.print(about)

    live = Table("", "", title="live", title_justify="left", show_header=False, box=None)
    live.add_row("documents", f"{i.size}")
    live.add_row("index version", f"{i.version}")
    live.add_row("Info round trip", f"{info_ms:.1f} ms")
    for row in _live_rows(metrics) if metrics is not None else ():
        live.add_row(*row)
    out.print(live)
    return 0 if health[0] == "SERVING" else 2
