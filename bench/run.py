"""`make bench`: every benchmark side by side in one run, one table, a JSON file, and a new section at
the top of bench/RESULTS.md. Each figure is compared with its baseline measured in the same run.

    python -m bench.run            # full run (about 10 minutes on 2 cores; first run also builds peer venvs)
    python -m bench.run --quick    # short smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, commit {commit}, load average {load:.1f} at start"


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


async def _run(quick: bool) -> dict[str, Any]:
    from bench import (
        embed_retrieve,
        generate_engine,
        interceptor_overhead,
        overload,
        peers,
        serve_generate,
        transport,
    )

    short = {"rounds": 2, "service_s": 2.0, "raw_s": 0.5, "warmup_s": 1.0} if quick else {}
    results: dict[str, Any] = {}
    results["embed"] = await embed_retrieve.bench_embed(**short)
    results["embed_infinity"] = await peers.infinity_embed(duration_s=8.0 if quick else 20.0)
    results["retrieve"] = await embed_retrieve.bench_retrieve(documents=20_000 if quick else 100_000, **short)
    results["generate_engine"] = await generate_engine.bench_generate_engine(
        **({"new_tokens": 32, "rounds": 1, "ttft_trials": 3} if quick else {})
    )
    seconds = 15.0 if quick else 30.0
    results["generate_server"] = await serve_generate.serve_generate(duration_s=seconds)
    results["generate_peer"] = await peers.transformers_serve_generate(duration_s=seconds)
    results["transport"] = await transport.bench_transport(duration_s=2.0 if quick else 5.0)
    results["interceptors"] = await asyncio.to_thread(
        interceptor_overhead.run, **({"calls": 500, "rounds": 3} if quick else {})
    )
    results["overload"] = await overload.bench_overload(phase_s=8.0 if quick else 20.0)
    return results


def _table(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, rag-grpc, baseline, ratio) rows."""
    rows: list[tuple[str, str, str, str]] = []
    embed, inf = results["embed"], results["embed_infinity"]
    ours = embed["service"]["per_s"]
    rows.append(
        (
            "Embed, 64 clients x 1 text (texts/s)",
            f"{ours:.0f}",
            f"raw encode, batch {embed['raw_best_batch_size']}: {embed['raw_texts_per_s']:.0f}",
            f"{embed['ratio']:.2f} (median of rounds {embed['ratio_median_of_rounds']:.2f}; target >= 0.85)",
        )
    )
    rows.append(
        (
            "Embed vs infinity-emb, same load (texts/s)",
            f"{ours:.0f}",
            f"infinity-emb {inf['texts_per_s']:.0f}",
            f"{_ratio(ours, inf['texts_per_s']):.2f} (target >= 1.5)",
        )
    )
    retrieve = results["retrieve"]
    for mode, target in (("vector", " (target >= 0.8)"), ("text", "")):
        service, raw = retrieve[f"by_{mode}"], retrieve[f"raw_{mode}"]
        rows.append(
            (
                f"Retrieve by {mode}, {retrieve['documents']:,} docs, 64 callers (QPS)",
                f"{service['per_s']:.0f} (p50 {service['p50_ms']:.0f} ms, p99 {service['p99_ms']:.0f} ms)",
                f"raw FAISS batch: {raw['per_s']:.0f}",
                f"{retrieve[f'{mode}_ratio']:.2f}{target}",
            )
        )
    for streams, engine_row in results["generate_engine"]["results"].items():
        raw, engine = engine_row["raw"], engine_row["engine"]
        rows.append(
            (
                f"Generate engine, {streams} concurrent x {results['generate_engine']['new_tokens']} tokens (tok/s)",
                f"{engine['tokens_per_s']:.1f}",
                f"raw batch-{streams} generate: {raw['tokens_per_s']:.1f}",
                f"{engine_row['throughput_ratio']:.2f}" + (" (target >= 0.85)" if streams == "16" else ""),
            )
        )
        rows.append(
            (
                f"  TTFT p50 / p99, {streams} concurrent (ms)",
                f"{engine['ttft_p50_ms']:.0f} / {engine['ttft_p99_ms']:.0f}",
                f"raw {raw['ttft_p50_ms']:.0f} / {raw['ttft_p99_ms']:.0f}",
                f"{engine_row['ttft_p50_excess_ms']:+.0f} ms"
                + (" (target <= +10 ms)" if streams == "1" else ""),
            )
        )
    peer_rows = {row["streams"]: row for row in results["generate_peer"]["rows"]}
    for ours_row in results["generate_server"]["rows"]:
        streams = ours_row["streams"]
        peer = peer_rows.get(streams, {})
        rows.append(
            (
                f"Generate via gRPC, {streams} stream(s) (tok/s; TTFT p50 ms)",
                f"{ours_row['tokens_per_s']:.1f}; {ours_row['ttft_p50_ms']:.0f}",
                f"transformers serve: {peer.get('tokens_per_s', 0):.1f}; {peer.get('ttft_p50_ms', 0):.0f}",
                f"{_ratio(ours_row['tokens_per_s'], peer.get('tokens_per_s', 0)):.2f}"
                + (" (target >= 1.5)" if streams == 16 else ""),
            )
        )
    for row in results["transport"]["rows"]:
        rows.append(
            (
                f"Transport, instant engine, {row['streams']} stream(s)",
                f"{row['messages_per_s']:.0f} msg/s",
                f"{row['tokens_per_s']:.0f} tok/s delivered",
                "coalesced",
            )
        )
    chain = results["interceptors"]
    full, bare = chain["variants"]["full"], chain["variants"]["bare"]
    rows.append(
        (
            "Unary Info, full interceptor chain vs none (p50 / p99 ms)",
            f"{full['p50_ms']:.3f} / {full['p99_ms']:.3f}",
            f"no interceptors {bare['p50_ms']:.3f} / {bare['p99_ms']:.3f}",
            f"+{chain['overhead_p50_ms']:.3f} ms at p50 (target <= +0.3 ms)",
        )
    )
    over = results["overload"]
    rows.append(
        (
            "Overload at 4x sustainable Generate rate: rejected share",
            f"{over['rejected_share']:.0%}",
            f"{over['requests']} requests at {over['offered_rate_per_s']:.1f}/s",
            "",
        )
    )
    rows.append(("  rejection latency p99 (ms)", f"{over['rejection_p99_ms']:.1f}", "", "target <= 50 ms"))
    rows.append(
        (
            "  admitted p99 vs unloaded p99 (ms)",
            f"{over['admitted_p99_ms']:.0f}",
            f"unloaded {over['unloaded_p99_ms']:.0f}",
            f"server alive: {over['server_alive_after']}, peak RSS {over['server_peak_rss_mb']:.0f} MB",
        )
    )
    return rows


def _markdown(rows: list[tuple[str, str, str, str]], machine: str, quick: bool) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}{' (quick)' if quick else ''}",
        "",
        f"Machine: {machine}",
        "",
        "| benchmark | rag-grpc | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not add the run to bench/RESULTS.md")
    args = parser.parse_args()
    machine = _machine()
    results = asyncio.run(_run(args.quick))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, **results}, indent=2, default=str))
    rows = _table(results)
    section = _markdown(rows, machine, args.quick)
    print("\n" + section)
    if not args.no_record:
        header = "# Benchmark results\n\nNewest first. Produced by `make bench` (bench/run.py); every ratio compares figures measured in the same run.\n\n"
        old = RESULTS.read_text().split("\n", 1)[1] if RESULTS.exists() else ""
        old = old.split("\n\n", 1)[1] if old.startswith("\nNewest") else old
        RESULTS.write_text(header + section + "\n" + old.lstrip("\n"))


if __name__ == "__main__":
    main()
