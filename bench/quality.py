"""Grounded-answer quality of every generator configuration on the whole quality set (bench/qa), and
the router's quality-versus-cost table, through the real API.

Each configuration is a server of its own (bench.server.serving, caches off) holding the set's corpus;
every question is asked greedily with 5 retrieved sources and at most 32 tokens. The router table
(RouteLLM's measures) is computed from the per-question outcomes of the small and the big model and the
router's difficulty of each question, at thresholds calibrated to 25, 50 and 75 % big-model calls; the
50 % threshold is then run for real with model "auto" to check the simulation.

    python -m bench.quality [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from bench.qa.score import Question, Report, ingest_corpus, load_questions, run
from bench.server import bench_settings, serving
from rag_grpc.domain import Hit
from rag_grpc.service.grounding import select_sources
from rag_grpc.service.routing import RouteSignals, calibrated_threshold
from rag_grpc_client.aio import AsyncClient

MAX_TOKENS = 32
TOP_K = 5
SMALL, BIG = "small-int4", "big-float32"
# (label, settings overrides); cache off so every question reaches the engine.
CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("transformers float32 (default)", {}),
    (
        "transformers float32, grounding_check off (before issue 11)",
        {"grounding_check": False, "grounding_max_sources": 5},
    ),
    ("onnxruntime int4", {"generator_backend": "onnxruntime", "generator_precision": "int4"}),
    ("onnxruntime float32", {"generator_backend": "onnxruntime", "generator_precision": "float32"}),
    (
        "vLLM for CPU float32 (eager)",
        {"generator_backend": "vllm", "vllm_enforce_eager": True, "vllm_kv_cache_memory_bytes": 1 << 30},
    ),
)
ROUTED = {
    "generators": json.dumps(
        [
            {"name": BIG, "backend": "transformers", "default": True},
            {"name": SMALL, "backend": "onnxruntime", "precision": "int4"},
        ]
    ),
    "route_small_model": SMALL,
    "route_big_model": BIG,
}


async def _score(
    overrides: dict[str, Any], questions: Sequence[Question], model: str = ""
) -> tuple[Report, float]:
    settings = bench_settings(cache_backend="none", **overrides)
    async with serving(settings) as served, AsyncClient(served.target) as client:
        await ingest_corpus(client)
        started = time.perf_counter()
        report = await run(client, questions, model=model, top_k=TOP_K, max_tokens=MAX_TOKENS, concurrency=8)
        return report, time.perf_counter() - started


async def _difficulties(questions: Sequence[Question]) -> dict[str, float | None]:
    """The router's difficulty of each question, from the sources the service would keep (None: the
    service declines by itself, no model runs)."""
    settings = bench_settings(cache_backend="none", generator_backend="none")
    limits = settings.limits
    out: dict[str, float | None] = {}
    async with serving(settings, with_generator=False) as served, AsyncClient(served.target) as client:
        await ingest_corpus(client)
        for question in questions:
            hits = await client.retrieve(question.question, top_k=TOP_K)
            found = [Hit(h.id, h.score, h.text, h.metadata) for h in hits.hits]
            grounding = select_sources(
                question.question,
                found,
                relative_floor=limits.grounding_relative_floor,
                max_sources=limits.grounding_max_sources,
            )
            out[question.id] = (
                RouteSignals.of(question.question, grounding.hits).difficulty()[0]
                if grounding.answerable
                else None
            )
    return out


def _router_table(
    small: Report, big: Report, difficulty: dict[str, float | None], shares: Sequence[float]
) -> dict[str, Any]:
    ok_small = {o.question.id: o.ok for o in small.outcomes}
    ok_big = {o.question.id: o.ok for o in big.outcomes}
    routed = [qid for qid, d in difficulty.items() if d is not None]
    n = len(ok_big)
    q_small, q_big = sum(ok_small.values()) / n, sum(ok_big.values()) / n

    def at(threshold: float) -> tuple[float, float]:
        big_calls = [qid for qid in routed if (difficulty[qid] or 0.0) > threshold]
        correct = sum(ok_big[qid] if qid in big_calls else ok_small[qid] for qid in ok_big)
        return correct / n, len(big_calls) / max(1, len(routed))

    rows = []
    for share in shares:
        threshold = calibrated_threshold([difficulty[q] or 0.0 for q in routed], share)
        quality, big_share = at(threshold)
        rows.append(
            {"target_big_share": share, "threshold": threshold, "accuracy": quality, "big_share": big_share}
        )
    # APGR: the mean performance gap recovered over big-call shares 0..100 % in 5 % steps.
    gap = q_big - q_small
    pgrs = []
    for step in range(21):
        quality, _ = at(calibrated_threshold([difficulty[q] or 0.0 for q in routed], step / 20))
        pgrs.append((quality - q_small) / gap if gap else float("nan"))
    return {
        "small_accuracy": q_small,
        "big_accuracy": q_big,
        "rows": rows,
        "apgr": sum(pgrs) / len(pgrs),
        "routed_questions": len(routed),
    }


async def bench_quality() -> dict[str, Any]:
    questions = load_questions()
    configs: dict[str, Any] = {}
    reports: dict[str, Report] = {}
    for label, overrides in CONFIGS:
        report, seconds = await _score(overrides, questions)
        reports[label] = report
        configs[label] = report.summary() | {"seconds": seconds, "failures": report.failures()[:12]}
        print(
            f"{label}: {configs[label]['answerable_correct']:.2f} answerable, "
            f"{configs[label]['unanswerable_declined']:.2f} declined ({seconds:.0f} s)",
            flush=True,
        )
    difficulty = await _difficulties(questions)
    table = _router_table(
        reports["onnxruntime int4"], reports["transformers float32 (default)"], difficulty, (0.25, 0.5, 0.75)
    )
    half = next(row for row in table["rows"] if row["target_big_share"] == 0.5)
    auto, seconds = await _score(ROUTED | {"route_threshold": half["threshold"]}, questions, model="auto")
    calls = [o for o in auto.outcomes if o.model]
    table["auto_run"] = auto.summary() | {
        "threshold": half["threshold"],
        "big_share": sum(o.model == BIG for o in calls) / max(1, len(calls)),
        "seconds": seconds,
    }
    return {"configs": configs, "router": table, "questions": len(questions)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(bench_quality())
    text = json.dumps(results, indent=1)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text)
    print(text)


if __name__ == "__main__":
    main()
