"""Soak and deadline storm: does the server answer every call with a status it means, under mixed load?

Both run through the one closed loop (bench/load.py), bounded in time and count, against a server on
loopback, and count status codes per call kind. They measure correctness, not speed.

- Soak: `generation_callers` callers of Generate (short answers, greedy ones replayed from the answer
  cache and sampled ones computed; streams the caller cancels after a few messages; streams with a
  0.3 s deadline) beside `other_callers` callers of Embed, Retrieve by text and by vector, Upsert and
  Delete, for `duration_s`. `make bench` runs it with the result caches in a real Redis.
- Storm: `long_streams` long sampled streams beside `deadline_callers` callers whose grounded Generates
  carry deadlines drawn from 0.05-0.6 s, so that many pass while the prompt is being prefilled.

Each caller group picks its call kind from the request index (round robin), so a group's callers keep
to their share. All Generate callers share one in-flight gauge: that is the number of Generate callers
connected around each answer.

Verdict: it fails on any INTERNAL or UNKNOWN (a bug, never a meaning), and on any UNAVAILABLE that a
Generate got while at most `capacity` (max_concurrent_generations) Generate callers were connected:
then every one of them fits in a running slot, nothing has to queue, and "overloaded" is not true.
Other codes are reported per kind: DEADLINE_EXCEEDED and CANCELLED are the expected outcome of the
deadline and cancel kinds.

    python -m bench.soak --quick        # about a minute: 20 s soak, 15 s storm
    python -m bench.soak --soak-s 120 --storm-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.embed_retrieve import short_text
from bench.load import InFlight, LoadResult, Sample, format_codes, run_load
from bench.serve_generate import fixed_length
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

FAILING_CODES = ("INTERNAL", "UNKNOWN")
OUT = Path(__file__).resolve().parent / "out"

_QUESTIONS = [
    "What keeps a lighthouse lamp turning?",
    "How is coffee roasted?",
    "Which planet has the most moons?",
    "What does rag-grpc do with a deadline?",
    "Why do lighthouses have different light patterns?",
    "How long does espresso extraction take?",
    "What is the largest planet in the solar system?",
    "How are documents stored in rag-grpc?",
]


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 120.0
    generation_callers: int = 16
    other_callers: int = 16
    short_tokens: int = 16
    cancel_after_messages: int = 3
    deadline_s: float = 0.3
    max_requests: int = 200_000


@dataclass(frozen=True)
class StormConfig:
    duration_s: float = 60.0
    long_streams: int = 6
    long_tokens: int = 256
    deadline_callers: int = 10
    deadline_min_s: float = 0.05
    deadline_max_s: float = 0.6
    max_requests: int = 100_000


@dataclass
class Verdict:
    """What one soak or storm saw, and whether it passes."""

    name: str
    capacity: int
    duration_s: float
    codes_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    unavailable_within_capacity: int = 0  # Generate answered UNAVAILABLE with <= capacity callers on
    deadline_before_first_token: int = 0  # DEADLINE_EXCEEDED Generates that had streamed no token yet
    peak_generation_callers: int = 0
    cancelled_in_flight: int = 0  # calls still running after the drain, cut off by the bench

    @property
    def calls(self) -> int:
        return sum(sum(codes.values()) for codes in self.codes_by_kind.values())

    @property
    def codes(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for codes in self.codes_by_kind.values():
            total.update(codes)
        return dict(total)

    @property
    def failing(self) -> dict[str, int]:
        """INTERNAL and UNKNOWN answers, by code."""
        return {code: n for code, n in self.codes.items() if code in FAILING_CODES}

    @property
    def passed(self) -> bool:
        return not self.failing and self.unavailable_within_capacity == 0

    def line(self) -> str:
        """One line for a table: PASS/FAIL and why."""
        failing = format_codes(self.failing) if self.failing else "no INTERNAL/UNKNOWN"
        return (
            f"{'PASS' if self.passed else 'FAIL'}: {failing}; {self.unavailable_within_capacity} UNAVAILABLE "
            f"with <= {self.capacity} Generate callers (peak {self.peak_generation_callers})"
        )

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "calls": self.calls,
            "codes": self.codes,
            "failing": self.failing,
            "passed": self.passed,
        }


def judge(
    name: str,
    capacity: int,
    duration_s: float,
    generation: Sequence[LoadResult],
    other: Sequence[LoadResult] = (),
) -> Verdict:
    """The verdict over the Generate runs (whose in_flight counts Generate callers) and the other runs."""
    verdict = Verdict(name, capacity, duration_s)
    by_kind: dict[str, Counter[str]] = {}
    for result in (*generation, *other):
        verdict.cancelled_in_flight += result.cancelled_in_flight
        for kind, codes in result.codes_by_kind().items():
            by_kind.setdefault(kind, Counter()).update(codes)
    for result in generation:
        for m in result.measurements:
            verdict.peak_generation_callers = max(verdict.peak_generation_callers, m.in_flight)
            if m.code == "UNAVAILABLE" and m.in_flight <= capacity:
                verdict.unavailable_within_capacity += 1
            if m.code == "DEADLINE_EXCEEDED" and m.ttft_s is None:
                verdict.deadline_before_first_token += 1
    verdict.codes_by_kind = {kind: dict(codes) for kind, codes in sorted(by_kind.items())}
    return verdict


# ------------------------------------------------------------------ calls


def _round_robin(kinds: Sequence[str]) -> Callable[[int], str]:
    return lambda i: kinds[i % len(kinds)]


async def _stream(call: Any, cancel_after: int | None = None) -> Sample:
    """Reads a Generate stream to its end, or cancels it after `cancel_after` messages.

    A stream that ends with an error keeps what it got before (so a deadline that passed before the
    first token, during retrieval or prefill, can be told from one that passed while decoding).
    """
    messages = tokens = 0
    first: float | None = None
    try:
        async for message in call:
            messages += 1
            if message.HasField("delta"):
                tokens += message.delta.token_count
                first = first or time.perf_counter()
            if cancel_after is not None and messages >= cancel_after:
                call.cancel()
                return Sample(items=tokens, first_item_at=first, code="CANCELLED")
    except grpc.aio.AioRpcError as err:
        return Sample(items=tokens, first_item_at=first, code=err.code().name)
    return Sample(items=tokens, first_item_at=first)


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.embed = pb_grpc.EmbedServiceStub(channel)
        self.retrieve = pb_grpc.RetrieveServiceStub(channel)
        self.generate = pb_grpc.GenerateServiceStub(channel)
        self.documents = pb_grpc.DocumentServiceStub(channel)
        self.info = pb_grpc.InfoServiceStub(channel)


GENERATION_KINDS = ("generate_short", "generate_cancelled", "generate_deadline")
OTHER_KINDS = ("embed", "retrieve_text", "retrieve_vector", "upsert", "delete")


def _soak_generation_call(stubs: _Stubs, config: SoakConfig) -> Callable[[int], Awaitable[Sample]]:
    kind_of = _round_robin(GENERATION_KINDS)

    async def call(i: int) -> Sample:
        question = _QUESTIONS[i % len(_QUESTIONS)]
        kind = kind_of(i)
        if kind == "generate_short":
            # Every other one greedy: the same few questions, so most are replayed from the answer cache.
            temperature = 0.0 if (i // len(GENERATION_KINDS)) % 2 == 0 else 0.7
            retrieval = pb.RetrievalOptions(top_k=2) if i % 4 == 0 else None
            request = pb.GenerateRequest(
                prompt=question,
                sampling=pb.SamplingParams(max_tokens=config.short_tokens, temperature=temperature),
                retrieval=retrieval,
            )
            return await _stream(stubs.generate.Generate(request, timeout=120))
        sampled = pb.SamplingParams(max_tokens=64, temperature=0.7)
        if kind == "generate_cancelled":
            request = pb.GenerateRequest(prompt=question, sampling=sampled)
            call_ = stubs.generate.Generate(request, timeout=120)
            return await _stream(call_, cancel_after=config.cancel_after_messages)
        request = pb.GenerateRequest(prompt=question, sampling=sampled, retrieval=pb.RetrievalOptions())
        return await _stream(stubs.generate.Generate(request, timeout=config.deadline_s))

    return call


def _soak_other_call(stubs: _Stubs, dimension: int, seed: int) -> Callable[[int], Awaitable[Sample]]:
    kind_of = _round_robin(OTHER_KINDS)
    vectors = np.random.default_rng(seed).normal(size=(256, dimension)).astype(np.float32).tolist()
    stored: deque[str] = deque()  # ids upserted and not yet deleted, oldest first

    async def upsert(i: int) -> Sample:
        doc_id = f"soak-{seed}-{i}"
        document = pb.Document(id=doc_id, text=f"soak document {i}: {short_text(i)}", metadata={"soak": "1"})
        await stubs.documents.Upsert(pb.UpsertRequest(documents=[document]), timeout=30)
        stored.append(doc_id)
        return Sample(items=1)

    async def call(i: int) -> Sample:
        kind = kind_of(i)
        # A couple of hundred distinct query texts: the embedding and retrieval caches both hit and miss
        # (and every write below invalidates the cached retrievals).
        text = short_text((i // len(OTHER_KINDS)) % 200)
        if kind == "embed":
            await stubs.embed.Embed(pb.EmbedRequest(texts=[text]), timeout=30)
        elif kind == "retrieve_text":
            await stubs.retrieve.Retrieve(pb.RetrieveRequest(text=text, top_k=5), timeout=30)
        elif kind == "retrieve_vector":
            query = pb.Vector(values=vectors[i % len(vectors)])
            await stubs.retrieve.Retrieve(pb.RetrieveRequest(vector=query, top_k=5), timeout=30)
        elif kind == "upsert" or not stored:
            return await upsert(i)  # a "delete" with nothing left to delete stores a document instead
        else:
            # popleft before the await: no other caller can pick the same id.
            await stubs.documents.Delete(pb.DeleteRequest(ids=[stored.popleft()]), timeout=30)
        return Sample(items=1)

    return call


async def run_soak(target: str, capacity: int, config: SoakConfig, seed: int = 0) -> Verdict:
    """The soak against a running server; `capacity` is its max_concurrent_generations."""
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = _Stubs(channel)
        dimension = (await stubs.info.Info(pb.InfoRequest(), timeout=30)).embedder.dimension
        generation = run_load(
            _soak_generation_call(stubs, config),
            config.generation_callers,
            config.duration_s,
            config.max_requests,
            drain_s=30.0,
            kind_of=_round_robin(GENERATION_KINDS),
            in_flight=InFlight(),
        )
        other = run_load(
            _soak_other_call(stubs, dimension, seed),
            config.other_callers,
            config.duration_s,
            config.max_requests,
            drain_s=30.0,
            kind_of=_round_robin(OTHER_KINDS),
        )
        generation_result, other_result = await asyncio.gather(generation, other)
    return judge("soak", capacity, config.duration_s, [generation_result], [other_result])


async def run_storm(target: str, capacity: int, config: StormConfig) -> Verdict:
    """The deadline storm against a running server; `capacity` is its max_concurrent_generations."""
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = _Stubs(channel)

        async def long_stream(i: int) -> Sample:
            sampling = fixed_length(config.long_tokens, temperature=0.8)
            request = pb.GenerateRequest(prompt="Write a long story about a lighthouse.", sampling=sampling)
            return await _stream(stubs.generate.Generate(request, timeout=300))

        async def grounded_with_deadline(i: int) -> Sample:
            deadline_s = random.Random(i).uniform(config.deadline_min_s, config.deadline_max_s)
            request = pb.GenerateRequest(
                prompt=_QUESTIONS[i % len(_QUESTIONS)],
                sampling=pb.SamplingParams(max_tokens=32, temperature=0.7),
                retrieval=pb.RetrievalOptions(top_k=8),
            )
            return await _stream(stubs.generate.Generate(request, timeout=deadline_s))

        gauge = InFlight()  # both groups are Generate callers
        results = await asyncio.gather(
            run_load(
                long_stream, config.long_streams, config.duration_s, config.max_requests,
                drain_s=120.0, kind_of=lambda _: "long_stream", in_flight=gauge,
            ),
            run_load(
                grounded_with_deadline, config.deadline_callers, config.duration_s, config.max_requests,
                drain_s=30.0, kind_of=lambda _: "grounded_deadline", in_flight=gauge,
            ),
        )  # fmt: skip
    return judge("storm", capacity, config.duration_s, results)


# ------------------------------------------------------------------ against a server of its own


async def bench_soak(
    soak: SoakConfig | None = None, storm: StormConfig | None = None, capacity: int = 16
) -> dict[str, Any]:
    """Starts redis-server and `rag-grpc serve` (Redis caches, demo corpus, full interceptor chain,
    max_concurrent_generations=capacity) on loopback, runs the soak, then the storm, and stops both."""
    from bench.redis_server import redis_server
    from bench.server import server_process

    soak = soak or SoakConfig()
    storm = storm or StormConfig()
    log_path = OUT / "soak-server.log"
    async with redis_server() as redis_url:
        options: dict[str, str | int | float | bool] = {
            "cache_backend": "redis",
            "cache_redis_url": redis_url,
            "demo_corpus": True,
            "max_concurrent_generations": capacity,
            "log_level": "warning",
        }
        async with server_process(options, log_path) as server:
            soak_verdict = await run_soak(server.target, capacity, soak)
            storm_verdict = await run_storm(server.target, capacity, storm)
    result = {
        "server_log": str(log_path),
        "soak_config": asdict(soak),
        "storm_config": asdict(storm),
        "soak": soak_verdict.summary(),
        "storm": storm_verdict.summary(),
    }
    print_verdicts([soak_verdict, storm_verdict])
    return result


def print_verdicts(verdicts: Sequence[Verdict]) -> None:
    for verdict in verdicts:
        print(f"\n{verdict.name}: {verdict.calls} calls in {verdict.duration_s:.0f} s -> {verdict.line()}")
        print(
            f"  ({verdict.deadline_before_first_token} Generates passed their deadline before the first token)"
        )
        width = max(len(kind) for kind in verdict.codes_by_kind) if verdict.codes_by_kind else 4
        for kind, codes in verdict.codes_by_kind.items():
            print(f"  {kind:<{width}}  {format_codes(codes)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 s soak and 15 s storm")
    parser.add_argument("--soak-s", type=float, help="soak duration (default 120 s)")
    parser.add_argument("--storm-s", type=float, help="storm duration (default 60 s)")
    parser.add_argument("--capacity", type=int, default=16, help="the server's max_concurrent_generations")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    soak_s = args.soak_s or (20.0 if args.quick else SoakConfig.duration_s)
    storm_s = args.storm_s or (15.0 if args.quick else StormConfig.duration_s)
    result = asyncio.run(
        bench_soak(SoakConfig(duration_s=soak_s), StormConfig(duration_s=storm_s), args.capacity)
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if result["soak"]["passed"] and result["storm"]["passed"] else 1)


if __name__ == "__main__":
    main()
