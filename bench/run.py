"""`make bench`: every benchmark side by side in one run, one table, a JSON file, and a new section at
the top of bench/RESULTS.md. Each figure is compared with its baseline measured in the same run.

    python -m bench.run                 # full run (about 15 minutes on 2 cores; first run also builds peer venvs)
    python -m bench.run --quick         # short smoke run (a few minutes)
    python -m bench.run --quick --only soak,generate --no-record   # some benchmarks only

How the rows are made comparable: every load is bench/load.py's closed loop (the overload phase is an
open loop, said so in bench/overload.py) and every percentile is its `percentile` (numpy's linear
method); infinity-emb batches at most as many texts as our embedder (embed_batch_max_size); Generate
streams are a fixed number of tokens on both sides (min_tokens = max_tokens for ours, no EOS token for
the peer) and the table shows the tokens per stream each side really streamed; rows that measure
compute run with the result caches off (cache_backend=none), said in their note; the non-OK column
counts the answers of every gRPC-driven row by status code (those answers are left out of the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import format_codes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
BENCHMARKS = (
    "embed",
    "retrieve",
    "generate_engine",
    "generate",
    "transport",
    "interceptors",
    "overload",
    "soak",
    "scale_out",
    "vllm",
    "quality",
)
CACHES_OFF = "cache_backend=none"


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


async def _run(quick: bool, only: set[str], soak_s: float | None, storm_s: float | None) -> dict[str, Any]:
    from bench import (
        embed_retrieve,
        generate_engine,
        interceptor_overhead,
        overload,
        peers,
        quality,
        scale_out,
        serve_generate,
        soak,
        transport,
        vllm_sides,
    )

    short: dict[str, Any] = {"rounds": 2, "service_s": 2.0, "raw_s": 0.5, "warmup_s": 1.0} if quick else {}
    results: dict[str, Any] = {}
    if "embed" in only:
        results["embed"] = await embed_retrieve.bench_embed(**short)
        results["embed_infinity"] = await peers.infinity_embed(duration_s=8.0 if quick else 20.0)
    if "retrieve" in only:
        results["retrieve"] = await embed_retrieve.bench_retrieve(
            documents=20_000 if quick else 100_000, **short
        )
    if "generate_engine" in only:
        engine_quick: dict[str, Any] = {"new_tokens": 32, "rounds": 1, "ttft_trials": 3}
        results["generate_engine"] = await generate_engine.bench_generate_engine(
            **(engine_quick if quick else {})
        )
    if "generate" in only:
        seconds = 15.0 if quick else 30.0
        results["generate_server"] = await serve_generate.serve_generate(duration_s=seconds)
        results["generate_peer"] = await peers.transformers_serve_generate(duration_s=seconds)
    if "transport" in only:
        results["transport"] = await transport.bench_transport(duration_s=2.0 if quick else 5.0)
    if "interceptors" in only:
        chain_quick: dict[str, Any] = {"calls": 500, "rounds": 3}
        results["interceptors"] = await asyncio.to_thread(
            interceptor_overhead.run, **(chain_quick if quick else {})
        )
    if "overload" in only:
        results["overload"] = await overload.bench_overload(phase_s=8.0 if quick else 20.0)
    if "soak" in only:
        soak_config = soak.SoakConfig(duration_s=soak_s or (20.0 if quick else 120.0))
        storm_config = soak.StormConfig(
            duration_s=storm_s or (15.0 if quick else 60.0), long_tokens=128 if quick else 256
        )
        results["soak"] = await soak.bench_soak(soak_config, storm_config)
    if "scale_out" in only:
        results["scale_out"] = await scale_out.bench_scale_out(
            documents=20_000 if quick else 100_000, duration_s=3.0 if quick else 10.0
        )
    if "vllm" in only:
        results["vllm"] = await vllm_sides.bench_vllm_sides(duration_s=10.0 if quick else 30.0)
    if "quality" in only:
        results["quality"] = await quality.bench_quality()
    return results


@dataclass(frozen=True)
class Row:
    benchmark: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    non_ok: str = ""  # codes of the gRPC answers that were not OK; "" where no gRPC call is made
    note: str = ""


def _codes(*maps: dict[str, int]) -> str:
    total: dict[str, int] = {}
    for codes in maps:
        for code, count in codes.items():
            total[code] = total.get(code, 0) + count
    return format_codes(total)


def _embed_rows(results: dict[str, Any]) -> list[Row]:
    embed, inf = results["embed"], results["embed_infinity"]
    ours = embed["service"]["per_s"]
    codes = _codes(embed["service"]["non_ok"])
    return [
        Row(
            "Embed, 64 clients x 1 text (texts/s)",
            f"{ours:.0f}",
            f"raw encode, batch {embed['raw_best_batch_size']}: {embed['raw_texts_per_s']:.0f}",
            f"{embed['ratio']:.2f} (median of rounds {embed['ratio_median_of_rounds']:.2f}; target >= 0.85)",
            codes,
            f"{CACHES_OFF}; mean model batch {embed['service_mean_batch']:.1f}",
        ),
        Row(
            "Embed vs infinity-emb, same load (texts/s)",
            f"{ours:.0f}",
            f"infinity-emb {inf['texts_per_s']:.0f}",
            f"{_ratio(ours, inf['texts_per_s']):.2f} (target >= 1.5)",
            f"{codes} (infinity: HTTP errors fail the run)",
            f"batch cap 64 on both sides (infinity --batch-size {inf['batch_size']}); "
            f"{CACHES_OFF}, infinity --no-vector-disk-cache",
        ),
        *_embed_int8_rows(results),
    ]


def _embed_int8_rows(results: dict[str, Any]) -> list[Row]:
    """embedder_precision=int8: the same load in the same rounds as the float32 server (bench_embed)."""
    embed, inf = results["embed"], results["embed_infinity"]
    if "service_int8" not in embed:
        return []
    ours = embed["service_int8"]["per_s"]
    codes = _codes(embed["service_int8"]["non_ok"])
    return [
        Row(
            "Embed int8, 64 clients x 1 text (texts/s)",
            f"{ours:.0f}",
            f"float32 service {embed['service']['per_s']:.0f}",
            f"{embed['int8_over_float32']:.2f} (median of rounds {embed['int8_over_float32_median_of_rounds']:.2f})",
            codes,
            f"embedder_precision=int8 (ONNX Runtime); raw int8 engine, batch 64: "
            f"{embed['raw_int8_texts_per_s']:.0f}; mean model batch {embed['service_int8_mean_batch']:.1f}",
        ),
        Row(
            "Embed int8 vs infinity-emb, same load (texts/s)",
            f"{ours:.0f}",
            f"infinity-emb {inf['texts_per_s']:.0f}",
            f"{_ratio(ours, inf['texts_per_s']):.2f} (target >= 1.5)",
            f"{codes} (infinity: HTTP errors fail the run)",
            f"batch cap 64 on both sides; infinity --engine torch float32, {CACHES_OFF}",
        ),
    ]


def _retrieve_rows(results: dict[str, Any]) -> list[Row]:
    retrieve = results["retrieve"]
    rows = []
    for mode, target in (("vector", " (target >= 0.8)"), ("text", "")):
        service, raw = retrieve[f"by_{mode}"], retrieve[f"raw_{mode}"]
        rows.append(
            Row(
                f"Retrieve by {mode}, {retrieve['documents']:,} docs, 64 callers (QPS)",
                f"{service['per_s']:.0f} (p50 {service['p50_ms']:.0f} ms, p99 {service['p99_ms']:.0f} ms)",
                f"raw FAISS batch: {raw['per_s']:.0f}",
                f"{retrieve[f'{mode}_ratio']:.2f}{target}",
                _codes(service["non_ok"]),
                CACHES_OFF,
            )
        )
    return rows


def _generate_engine_rows(results: dict[str, Any]) -> list[Row]:
    report = results["generate_engine"]
    rows = []
    for streams, engine_row in report["results"].items():
        raw, engine = engine_row["raw"], engine_row["engine"]
        rows.append(
            Row(
                f"Generate engine, {streams} concurrent x {report['new_tokens']} tokens (tok/s)",
                f"{engine['tokens_per_s']:.1f}",
                f"raw batch-{streams} generate: {raw['tokens_per_s']:.1f}",
                f"{engine_row['throughput_ratio']:.2f}" + (" (target >= 0.85)" if streams == "16" else ""),
                "",
                f"in-process, no gRPC; fewest tokens in an engine stream {engine['min_tokens']} "
                f"(raw: min_new_tokens = {report['new_tokens']})",
            )
        )
        rows.append(
            Row(
                f"  TTFT p50 / p99, {streams} concurrent (ms)",
                f"{engine['ttft_p50_ms']:.0f} / {engine['ttft_p99_ms']:.0f}",
                f"raw {raw['ttft_p50_ms']:.0f} / {raw['ttft_p99_ms']:.0f}",
                f"{engine_row['ttft_p50_excess_ms']:+.0f} ms"
                + (" (target <= +10 ms)" if streams == "1" else ""),
            )
        )
    return rows


def _stream_cell(row: dict[str, Any]) -> str:
    return (
        f"{row.get('tokens_per_s', 0):.1f} tok/s; TTFT {row.get('ttft_p50_ms', 0):.0f} ms; "
        f"{row.get('tokens_per_stream', 0):.1f} tok/stream (fewest {row.get('fewest_tokens_per_stream', 0)})"
    )


def _generate_rows(results: dict[str, Any]) -> list[Row]:
    ours_all, peer_all = results["generate_server"], results["generate_peer"]
    peer_rows = {row["streams"]: row for row in peer_all["rows"]}
    rows = []
    for ours in ours_all["rows"]:
        streams = ours["streams"]
        peer = peer_rows.get(streams, {})
        rows.append(
            Row(
                f"Generate via gRPC, {streams} stream(s) x {ours_all['tokens']} tokens",
                _stream_cell(ours),
                f"transformers serve: {_stream_cell(peer)}",
                f"{_ratio(ours['tokens_per_s'], peer.get('tokens_per_s', 0)):.2f}"
                + (" (target >= 1.5)" if streams == 16 else ""),
                _codes(ours["non_ok"]),
                f"greedy; ours min_tokens = max_tokens, peer without EOS token; {CACHES_OFF}",
            )
        )
    return rows


def _other_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for row in results.get("transport", {}).get("rows", ()):
        rows.append(
            Row(
                f"Transport, instant engine, {row['streams']} stream(s) x 256 tokens",
                f"{row['messages_per_s']:.0f} msg/s",
                f"{row['tokens_per_s']:.0f} tok/s delivered",
                "coalesced",
                _codes(row["non_ok"]),
                f"{row['tokens_per_stream']:.0f} tok/stream; {CACHES_OFF}",
            )
        )
    if "interceptors" in results:
        chain = results["interceptors"]
        full, bare = chain["variants"]["full"], chain["variants"]["bare"]
        rows.append(
            Row(
                "Unary Info, auth + rate limit on top of the default chain (p50 / p99 ms)",
                f"{full['p50_ms']:.3f} / {full['p99_ms']:.3f}",
                f"default chain (log, metrics, errors, drain, deadline) {bare['p50_ms']:.3f} / {bare['p99_ms']:.3f}",
                f"{chain['overhead_p50_ms']:+.3f} ms at p50 (target <= +0.3 ms)",
                _codes(full["non_ok"], bare["non_ok"]),
                "one client; Info touches no cache; since the consolidation no server is without the default chain",
            )
        )
    if "overload" in results:
        over = results["overload"]
        rows += [
            Row(
                "Overload at 4x sustainable Generate rate: rejected share",
                f"{over['rejected_share']:.0%}",
                f"{over['requests']} requests at {over['offered_rate_per_s']:.1f}/s",
                "",
                _codes({k: v for k, v in over["codes"].items() if k != "OK"}),
                "open loop; sampled requests, cache_backend=none; rejections are the expected non-OK",
            ),
            Row("  rejection latency p99 (ms)", f"{over['rejection_p99_ms']:.1f}", "", "target <= 50 ms"),
            Row(
                "  admitted p99 vs unloaded p99 (ms)",
                f"{over['admitted_p99_ms']:.0f}",
                f"unloaded {over['unloaded_p99_ms']:.0f}",
                f"server alive: {over['server_alive_after']}, peak RSS {over['server_peak_rss_mb']:.0f} MB",
                _codes(*over["closed_loop_non_ok"].values()),
                "non-OK here: the closed-loop unloaded and sustained phases",
            ),
        ]
    return rows


def _soak_rows(results: dict[str, Any]) -> list[Row]:
    soak = results["soak"]
    rows = []
    for name, config, label in (
        (
            "soak",
            soak["soak_config"],
            "Soak: {callers} callers x {duration_s:.0f} s, mixed calls, Redis caches on",
        ),
        ("storm", soak["storm_config"], "Deadline storm: {callers} callers x {duration_s:.0f} s"),
    ):
        verdict = soak[name]
        callers = (
            config["generation_callers"] + config["other_callers"]
            if name == "soak"
            else config["long_streams"] + config["deadline_callers"]
        )
        non_ok = {code: n for code, n in verdict["codes"].items() if code != "OK"}
        rows.append(
            Row(
                label.format(callers=callers, duration_s=verdict["duration_s"]),
                f"{verdict['calls']} calls, {verdict['codes'].get('OK', 0)} OK",
                "",
                ("PASS" if verdict["passed"] else "FAIL")
                + f": INTERNAL/UNKNOWN {sum(verdict['failing'].values())}, UNAVAILABLE with <= "
                f"{verdict['capacity']} Generate callers {verdict['unavailable_within_capacity']}",
                format_codes(non_ok),
                "per kind below; DEADLINE_EXCEEDED and CANCELLED are the deadline and cancel kinds' expected codes",
            )
        )
    return rows


def _scale_out_rows(results: dict[str, Any]) -> list[Row]:
    scale = results["scale_out"]
    faiss, milvus = scale["faiss"], scale["milvus"]
    direct, nginx = scale["direct"], scale["nginx"]
    return [
        Row(
            f"Retrieve by vector, {scale['documents']:,} x {scale['dimension']}, {scale['clients']} callers: "
            "Milvus (QPS)",
            f"{milvus['per_s']:.0f} (p50 {milvus['p50_ms']:.0f} ms, p99 {milvus['p99_ms']:.0f} ms)",
            f"FAISS in process: {faiss['per_s']:.0f} (p50 {faiss['p50_ms']:.0f} ms)",
            f"{_ratio(milvus['per_s'], faiss['per_s']):.2f}",
            _codes(milvus["non_ok"], faiss["non_ok"]),
            f"milvus-lite server on loopback (pure Python on FAISS HNSW, not Milvus's engine); {CACHES_OFF}",
        ),
        Row(
            "Unary Info through the nginx front vs direct (p50 ms)",
            f"{nginx['p50_ms']:.3f}",
            f"direct {direct['p50_ms']:.3f}",
            f"{nginx['p50_ms'] - direct['p50_ms']:+.3f} ms",
            _codes(nginx["non_ok"], direct["non_ok"]),
            "one client; deploy/nginx/rag-grpc.conf (nginx-light, grpc_pass, least_conn, keepalive)",
        ),
    ]


_VLLM_SIDES = (
    ("vllm_grpc", "(a) vLLM gRPC server, direct"),
    ("vllm_grpc_preload", "(a') as (a), with tcmalloc and libiomp5 in LD_PRELOAD"),
    ("vllm_openai", "(b) vLLM OpenAI server"),
    ("rag_grpc_vllm", "(c) rag-grpc, vLLM in process"),
    ("rag_grpc_remote_grpc", "(d) rag-grpc, remote grpc:// in front of (a)"),
    ("rag_grpc_transformers", "(e) rag-grpc, transformers engine"),
    ("rag_grpc_onnxruntime", "(f) rag-grpc, onnxruntime engine (int4)"),
)
# vLLM's own servers: (f) is held against the best of them at each stream count.
_VLLM_PEERS = ("vllm_grpc", "vllm_grpc_preload", "vllm_openai")


def _against_best_peer(sides: dict[str, Any], row: dict[str, Any]) -> str:
    """(f)'s targets: >= 1.5x the best peer's tok/s at 1 stream, >= 1.2x at 16, TTFT at 1 stream <= the
    best peer's."""
    peers = [peer for key in _VLLM_PEERS for peer in sides.get(key, ()) if peer["streams"] == row["streams"]]
    if not peers:
        return ""
    best = max(peers, key=lambda peer: peer["tokens_per_s"])
    ratio = _ratio(row["tokens_per_s"], best["tokens_per_s"])
    goal = 1.5 if row["streams"] == 1 else 1.2
    verdict = f" (target >= {goal} x best peer {best['tokens_per_s']:.1f} tok/s: {ratio:.2f}"
    if row["streams"] == 1:
        best_ttft = min(peer["ttft_p50_ms"] for peer in peers)
        verdict += f"; TTFT <= {best_ttft:.0f} ms: {row['ttft_p50_ms'] - best_ttft:+.0f} ms"
    return verdict + ")"


def _vllm_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 9's table: every side against (a), vLLM's own gRPC server, at each stream count."""
    report = results["vllm"]
    sides = report["sides"]
    base_rows = {row["streams"]: row for row in sides["vllm_grpc"]}
    rows = []
    for key, label in _VLLM_SIDES:
        for row in sides.get(key, ()):
            base = base_rows[row["streams"]]
            target = ""
            if key == "rag_grpc_vllm":
                ttft_excess = row["ttft_p50_ms"] - base["ttft_p50_ms"]
                target = f" (target >= 0.95, TTFT <= (a) + 10 ms: {ttft_excess:+.0f} ms)"
            elif key == "rag_grpc_remote_grpc":
                target = " (target >= 0.9)"
            elif key == "rag_grpc_onnxruntime":
                target = _against_best_peer(sides, row)
            rows.append(
                Row(
                    f"{label}, {row['streams']} stream(s) x {report['tokens']} tokens",
                    f"{_stream_cell(row)}; TTFT p99 {row['ttft_p99_ms']:.0f} ms",
                    f"(a): {base['tokens_per_s']:.1f} tok/s, TTFT {base['ttft_p50_ms']:.0f} ms",
                    f"{_ratio(row['tokens_per_s'], base['tokens_per_s']):.2f}{target}",
                    _codes(row["non_ok"]),
                    "greedy, min_tokens = max_tokens; "
                    + (
                        "float32, 16-row batch"
                        if key == "rag_grpc_transformers"
                        else "int4 ONNX (onnxruntime-genai builder), 16-row step batching"
                        if key == "rag_grpc_onnxruntime"
                        else "vLLM float32, compiled, 1 GiB KV cache"
                    )
                    + "; "
                    + CACHES_OFF,
                )
            )
    return rows


def _quality_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 11: accuracy on the quality set per generator configuration, and the router's table."""
    report = results["quality"]
    configs, router = report["configs"], report["router"]
    reference = configs["transformers float32 (default)"]
    rows = []
    for label, summary in configs.items():
        target = ""
        if label == "transformers float32 (default)":
            met = summary["answerable_correct"] >= 0.85 and summary["unanswerable_declined"] >= 0.8
            target = f" (targets >= 85 % / >= 80 %: {'met' if met else 'missed'})"
        elif label.startswith("onnxruntime int4"):
            drop = (reference["accuracy"] - summary["accuracy"]) * 100
            target = f" (target within 2 points of float32: {drop:+.1f} points, {'met' if drop <= 2 else 'missed'})"
        rows.append(
            Row(
                f"Quality set, {report['questions']} questions: {label}",
                f"{summary['answerable_correct']:.0%} answerable correct, "
                f"{summary['unanswerable_declined']:.0%} unanswerable declined",
                f"all questions {summary['accuracy']:.0%}; own document first {summary['retrieval_top1']:.0%}",
                target.strip(),
                "",
                f"greedy, 5 sources retrieved, <= 32 tokens, {summary['seconds']:.0f} s; {CACHES_OFF}",
            )
        )
    always_big = router["big_accuracy"]
    for row in router["rows"]:
        kept = row["accuracy"] / always_big if always_big else float("nan")
        target = ""
        if row["target_big_share"] == 0.5:
            met = kept >= 0.95 and row["big_share"] <= 0.5
            target = f" (target >= 95 % of always-big with <= 50 % big: {'met' if met else 'missed'})"
        rows.append(
            Row(
                f"Router, threshold {row['threshold']:.3f} (calibrated to {row['target_big_share']:.0%} big calls)",
                f"accuracy {row['accuracy']:.1%}, big-model calls {row['big_share']:.0%}",
                f"always small {router['small_accuracy']:.1%}, always big {always_big:.1%}",
                f"{kept:.1%} of always-big{target}",
                "",
                f"small = onnxruntime int4, big = transformers float32; simulated from both models' answers; "
                f"APGR {router['apgr']:.2f}",
            )
        )
    auto = router["auto_run"]
    rows.append(
        Row(
            "Router, model=auto through the API at the 50 % threshold",
            f"accuracy {auto['accuracy']:.1%}, big-model calls {auto['big_share']:.0%}",
            f"always big {always_big:.1%}",
            f"{auto['accuracy'] / always_big:.1%} of always-big" if always_big else "",
            "",
            "two generators in one server (generators setting); questions the service declines itself call no model",
        )
    )
    return rows


_ROW_MAKERS: tuple[tuple[str, Callable[[dict[str, Any]], list[Row]]], ...] = (
    ("embed", _embed_rows),
    ("retrieve", _retrieve_rows),
    ("generate_engine", _generate_engine_rows),
    ("generate_server", _generate_rows),
    ("", _other_rows),
    ("soak", _soak_rows),
    ("scale_out", _scale_out_rows),
    ("vllm", _vllm_rows),
    ("quality", _quality_rows),
)


def _table(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, make in _ROW_MAKERS:
        if not key or key in results:
            rows += make(results)
    return rows


def _soak_details(results: dict[str, Any]) -> list[str]:
    """Codes per call kind of the soak and the storm, as markdown lines."""
    if "soak" not in results:
        return []
    soak = results["soak"]
    lines = ["", "Soak and deadline storm, status codes per call kind:", ""]
    for name in ("soak", "storm"):
        verdict = soak[name]
        lines.append(
            f"- {name} ({verdict['calls']} calls, peak {verdict['peak_generation_callers']} Generate callers; "
            f"{verdict.get('deadline_before_first_token', 0)} Generates passed their deadline before the "
            "first token, i.e. in retrieval, the queue or prefill):"
        )
        for kind, codes in verdict["codes_by_kind"].items():
            lines.append(f"  - {kind}: {format_codes(codes)}")
    return lines


def _markdown(rows: list[Row], machine: str, quick: bool, details: list[str]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}{' (quick)' if quick else ''}",
        "",
        f"Machine: {machine}",
        "",
        "| benchmark | rag-grpc | baseline (same run) | ratio | non-OK | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.benchmark} | {r.ours} | {r.baseline} | {r.ratio} | {r.non_ok} | {r.note} |" for r in rows
    ]
    return "\n".join(lines + details) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not add the run to bench/RESULTS.md")
    parser.add_argument(
        "--only", help=f"comma-separated benchmarks to run (default all): {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--soak-s", type=float, help="soak duration (default 120 s, quick 20 s)")
    parser.add_argument("--storm-s", type=float, help="deadline storm duration (default 60 s, quick 15 s)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
    if unknown := only - set(BENCHMARKS):
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    machine = _machine()
    results = asyncio.run(_run(args.quick, only, args.soak_s, args.storm_s))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, **results}, indent=2, default=str))
    section = _markdown(_table(results), machine, args.quick, _soak_details(results))
    print("\n" + section)
    if not args.no_record:
        header = "# Benchmark results\n\nNewest first. Produced by `make bench` (bench/run.py); every ratio compares figures measured in the same run.\n\n"
        old = RESULTS.read_text().split("\n", 1)[1] if RESULTS.exists() else ""
        old = old.split("\n\n", 1)[1] if old.startswith("\nNewest") else old
        RESULTS.write_text(header + section + "\n" + old.lstrip("\n"))


if __name__ == "__main__":
    main()
