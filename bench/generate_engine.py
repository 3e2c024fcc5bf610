"""The transformers engine's batched generation against raw batched `model.generate`, in one run.

For each batch size N (1 and 16 by default), on the same loaded model:
- raw: one `model.generate` call over N left-padded prompts, `new_tokens` new tokens each, greedy,
  `min_new_tokens` set so every row yields exactly `new_tokens` tokens -> aggregate tokens/s, and
  time to first token (when the first new token reaches a streamer);
- engine: N concurrent `TransformersGenerator.generate` requests for the same prompts at
  temperature 0 -> aggregate tokens/s (tokens over the wall time from the first request to the last
  final chunk) and time to first token p50/p99 (request start to its first text chunk).

Both sides produce exactly `new_tokens` tokens per row: raw `generate` with min_new_tokens, the
engine with SamplingOptions.min_tokens (end-of-sequence suppressed until then); `engine.min_tokens`
reports the fewest tokens any engine request produced, so a short one would show. Raw and engine
phases alternate in rounds, so a shared machine's changing load hits both alike; throughput ratios
are medians of the per-round ratios. At one stream, extra alternating two-token pairs add
time-to-first-token samples. Both sides run their model calls on a worker thread, never the event
loop's.

This is not a load test and not a closed loop: each round sends one batch of N requests at once to
an engine in this process (no gRPC, no caches), so it does not use bench/load.py's runner; its
percentiles are bench/load.py's `percentile`.

Run: `python -m bench.generate_engine [--quick] [--json FILE]`; `bench_generate_engine()` returns a
dict and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from bench.load import percentile

TARGET_THROUGHPUT_RATIO = 0.85  # engine with 16 streams vs raw batch-16 generate
TARGET_TTFT_EXCESS_MS = 10.0  # engine TTFT at 1 stream minus raw TTFT

# The two sides call torch from different threads, and each calling thread has its own OpenMP team,
# whose idle threads keep spinning for a while after their work ends (OpenMP's default wait policy).
# A pause between phases keeps one side's spinning threads from taking cores from the other's start.
_SETTLE_S = 0.5

_SUBJECTS = [
    "a lighthouse keeper", "a clockmaker", "a lost otter", "a baker on the moon", "a shy dragon",
    "a river pilot", "a garden robot", "an old violinist", "a comet hunter", "a glacier guide",
    "a market cat", "a falcon trainer", "a tunnel digger", "a meadow fox", "a canyon painter",
    "an orchard owl",
]  # fmt: skip


def story_prompt(i: int) -> str:
    return f"Write a long story about {_SUBJECTS[i % len(_SUBJECTS)]}. Use many details and describe every scene."


class _FirstTokenClock:
    """A `generate` streamer that notes when the first new token arrives (its first put is the prompt)."""

    def __init__(self) -> None:
        self._puts = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def _raw_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], new_tokens: int
) -> tuple[float, float]:
    """Seconds for one batched greedy generate, and seconds to its first new token."""
    import torch

    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    clock = _FirstTokenClock()
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            streamer=clock,
        )
    elapsed = time.perf_counter() - started
    assert output.shape[1] - longest == new_tokens
    assert clock.first_token_at is not None
    return elapsed, clock.first_token_at - started


async def _engine_round(generator: Any, prompts: list[str], new_tokens: int) -> dict[str, Any]:
    from rag_grpc.domain import ChatMessage, GenerationRequest, SamplingOptions

    async def one(prompt: str) -> tuple[float, int]:
        # min_tokens = max_tokens: end-of-sequence is suppressed, as raw generate's min_new_tokens does.
        sampling = SamplingOptions(max_tokens=new_tokens, temperature=0.0, min_tokens=new_tokens)
        request = GenerationRequest(uuid.uuid4().hex, [ChatMessage("user", prompt)], sampling)
        started = time.perf_counter()
        first_text_at: float | None = None
        tokens = 0
        async for chunk in generator.generate(request):
            tokens += chunk.token_count
            if chunk.text and first_text_at is None:
                first_text_at = time.perf_counter()
        return (first_text_at or time.perf_counter()) - started, tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - started
    tokens = [t for _, t in results]
    return {
        "seconds": wall,
        "tokens": sum(tokens),
        "min_tokens": min(tokens),
        "ttft_s": [s for s, _ in results],
    }


def _model_and_tokenizer(generator: Any) -> tuple[Any, Any]:
    """The very model and tokenizer the engine serves with (its private parts), so both sides run the
    same weights and the same chat template."""
    return generator._model, generator._template.tokenizer


async def _measure(
    generator: Any, n: int, new_tokens: int, rounds: int, ttft_trials: int, deadline: float
) -> dict[str, Any]:
    model, tokenizer = _model_and_tokenizer(generator)
    texts = [story_prompt(i) for i in range(n)]
    prompt_ids = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for t in texts
    ]
    raw_rates: list[float] = []
    engine_rates: list[float] = []
    raw_ttfts: list[float] = []
    engine_ttfts: list[float] = []
    min_tokens = new_tokens
    for _ in range(rounds):
        if raw_rates and time.monotonic() > deadline:
            break
        raw_s, raw_ttft = await asyncio.to_thread(_raw_generate, model, tokenizer, prompt_ids, new_tokens)
        await asyncio.sleep(_SETTLE_S)
        engine = await _engine_round(generator, texts, new_tokens)
        await asyncio.sleep(_SETTLE_S)
        raw_rates.append(n * new_tokens / raw_s)
        raw_ttfts.append(raw_ttft)
        engine_rates.append(engine["tokens"] / engine["seconds"])
        engine_ttfts.extend(engine["ttft_s"])
        min_tokens = min(min_tokens, engine["min_tokens"])
    # Extra short pairs (two tokens each) sharpen the time-to-first-token figures cheaply.
    for _ in range(ttft_trials):
        if time.monotonic() > deadline:
            break
        _, raw_ttft = await asyncio.to_thread(_raw_generate, model, tokenizer, prompt_ids, 2)
        await asyncio.sleep(_SETTLE_S)
        engine_ttfts.extend((await _engine_round(generator, texts, 2))["ttft_s"])
        await asyncio.sleep(_SETTLE_S)
        raw_ttfts.append(raw_ttft)
    ratios = [engine / raw for engine, raw in zip(engine_rates, raw_rates, strict=True)]
    raw_ttft_p50_ms = percentile(raw_ttfts, 50) * 1000
    engine_ttft_p50_ms = percentile(engine_ttfts, 50) * 1000
    return {
        "rounds": len(raw_rates),
        "raw": {
            "tokens_per_s": percentile(raw_rates, 50),
            "ttft_p50_ms": raw_ttft_p50_ms,
            "ttft_p99_ms": percentile(raw_ttfts, 99) * 1000,
        },
        "engine": {
            "tokens_per_s": percentile(engine_rates, 50),
            "ttft_p50_ms": engine_ttft_p50_ms,
            "ttft_p99_ms": percentile(engine_ttfts, 99) * 1000,
            "min_tokens": min_tokens,
        },
        "throughput_ratio": percentile(ratios, 50),
        "round_ratios": ratios,
        "ttft_p50_excess_ms": engine_ttft_p50_ms - raw_ttft_p50_ms,
    }


async def bench_generate_engine(
    batch_sizes: tuple[int, ...] = (1, 16),
    new_tokens: int = 64,
    rounds: int = 3,
    ttft_trials: int = 10,
    max_seconds: float = 300.0,
) -> dict[str, Any]:
    """Measures raw batched generate and the engine side by side; bounded by the counts and `max_seconds`.

    `ttft_trials` extra short pairs are run at one stream only (at 16 each would cost a full prefill).
    """
    import torch

    from rag_grpc.engines.factory import build_generator
    from rag_grpc.engines.transformers_generator import TransformersGenerator
    from rag_grpc.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        generator_backend="transformers",
        generator_device="cpu",
        max_concurrent_generations=max(batch_sizes),  # the engine's batch
    )
    generator = await build_generator(settings)
    assert isinstance(generator, TransformersGenerator)
    deadline = time.monotonic() + max_seconds
    async with generator:
        model, tokenizer = _model_and_tokenizer(generator)
        warm_ids = tokenizer.encode(story_prompt(0))
        await asyncio.to_thread(_raw_generate, model, tokenizer, [warm_ids], 4)
        await _engine_round(generator, [story_prompt(0)], 4)
        results = {
            str(n): await _measure(generator, n, new_tokens, rounds, ttft_trials if n == 1 else 0, deadline)
            for n in batch_sizes
        }
    report: dict[str, Any] = {
        "model": generator.info.model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "new_tokens": new_tokens,
        "results": results,
    }
    if "16" in results:
        report["target_throughput_16"] = {
            "ratio": results["16"]["throughput_ratio"],
            "target": TARGET_THROUGHPUT_RATIO,
            "met": results["16"]["throughput_ratio"] >= TARGET_THROUGHPUT_RATIO,
        }
    if "1" in results:
        report["target_ttft_1"] = {
            "excess_ms": results["1"]["ttft_p50_excess_ms"],
            "target_ms": TARGET_TTFT_EXCESS_MS,
            "met": results["1"]["ttft_p50_excess_ms"] <= TARGET_TTFT_EXCESS_MS,
        }
    _print_table(report)
    return report


def _print_table(report: dict[str, Any]) -> None:
    header = (
        "streams",
        "raw tok/s",
        "engine tok/s",
        "ratio",
        "raw TTFT p50/p99 ms",
        "engine TTFT p50/p99 ms",
        "min tokens",
    )
    rows = [header]
    for n, r in report["results"].items():
        rows.append(
            (
                n,
                f"{r['raw']['tokens_per_s']:.1f}",
                f"{r['engine']['tokens_per_s']:.1f}",
                f"{r['throughput_ratio']:.2f}",
                f"{r['raw']['ttft_p50_ms']:.1f} / {r['raw']['ttft_p99_ms']:.1f}",
                f"{r['engine']['ttft_p50_ms']:.1f} / {r['engine']['ttft_p99_ms']:.1f}",
                str(r["engine"]["min_tokens"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(
        f"Generate engine vs raw generate ({report['model']}, {report['device']}, "
        f"{report['torch_threads']} torch threads, {report['new_tokens']} tokens per stream)"
    )
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for key in ("target_throughput_16", "target_ttft_1"):
        if key in report:
            print(f"{key}: {report[key]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 32 tokens per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the result dict to this file")
    args = parser.parse_args(argv)
    if args.quick:
        report = asyncio.run(bench_generate_engine(new_tokens=32, rounds=1, ttft_trials=3))
    else:
        report = asyncio.run(bench_generate_engine(rounds=args.rounds))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
