"""Embed and Retrieve throughput of the service, side by side with the raw engines, in one run.

- Embed: `clients` concurrent callers, each sending one short text per call, against the service
  on loopback -> texts/s and latency; against raw `SentenceTransformer.encode` on the same kind of
  texts at its best batch size. A second server with embedder_precision=int8 (ONNX Runtime, int8
  weights) takes the same load in the same rounds, next to its raw engine at batch 64.
- Retrieve: `documents` random unit vectors loaded straight into the store (not embedded);
  `clients` concurrent callers by vector and by text -> QPS and p50/p99; against raw batched FAISS
  search (an IndexFlatIP holding the same vectors, `clients` queries per call) and, for text
  queries, raw batched encode + search.

The server runs in this process; the load generator (bench/load.py's closed loop, the one every
row uses) runs in a child process so that its gRPC client work does not share the server's event
loop (it does share the machine's cores, as any load generator on the same host does). Raw and
service phases alternate in short rounds, so a shared machine's changing load hits both sides
alike; totals are summed over the rounds. Every phase is bounded by time and by request count. The
caches are off (cache_backend="none"), so every call reaches the engines; calls answered with a
non-OK status are counted by code and left out of the rates and latencies.

Run: `python -m bench.embed_retrieve [--quick] [--json FILE]`. bench_embed and bench_retrieve each
return a dict and print a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.load import LoadResult, Sample, format_codes, percentile, run_load
from bench.server import bench_settings, serving

TOP_K = 10
_WORDS = [
    "lighthouse", "coffee", "planet", "bread", "river", "otter", "granite", "harbour", "engine", "garden",
    "violin", "comet", "glacier", "lantern", "market", "orchard", "canyon", "falcon", "meadow", "tunnel",
]  # fmt: skip


def short_text(i: int) -> str:
    """A distinct short query (about a dozen tokens), so no two calls send the same text."""
    words = " ".join(_WORDS[(i // 20**k) % 20] for k in range(4))
    return f"where is the {words} number {i}?"


@dataclass
class Tally:
    """Items, seconds, per-item latencies and CPU time of one phase.

    CPU seconds per item are steadier than rates on a machine shared with other work: they show
    the service's overhead over the raw engine even when neighbours take cores away.
    """

    items: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # this process (the server, or the raw engine)
    client_cpu_s: float = 0.0  # the load generator's process
    codes: Counter[str] = field(default_factory=Counter)  # non-OK statuses (service phases only)

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        per_item = 1000.0 / max(self.items, 1)
        return {
            "per_s": self.per_s,
            "items": self.items,
            "seconds": self.seconds,
            "p50_ms": percentile(self.latencies_s, 50) * 1000.0,
            "p99_ms": percentile(self.latencies_s, 99) * 1000.0,
            "cpu_ms_per_item": self.cpu_s * per_item,
            "client_cpu_ms_per_item": self.client_cpu_s * per_item,
            "non_ok": dict(self.codes),
        }


@dataclass
class Series:
    """One measured thing, one Tally per round."""

    rounds: list[Tally] = field(default_factory=list)

    def new_round(self) -> Tally:
        self.rounds.append(Tally())
        return self.rounds[-1]

    @property
    def total(self) -> Tally:
        return Tally(
            items=sum(t.items for t in self.rounds),
            seconds=sum(t.seconds for t in self.rounds),
            latencies_s=[x for t in self.rounds for x in t.latencies_s],
            cpu_s=sum(t.cpu_s for t in self.rounds),
            client_cpu_s=sum(t.client_cpu_s for t in self.rounds),
            codes=sum((t.codes for t in self.rounds), Counter()),
        )


def ratio_summary(service: Series, *raws: Series) -> dict[str, Any]:
    """Service over the best raw series (by totals), two ways: of the totals, and the median of each
    round's ratio (robust to a neighbour's load spike that hits one phase of one round)."""
    best = max(raws, key=lambda raw: raw.total.per_s)
    per_round = [tally.per_s / best.rounds[n].per_s for n, tally in enumerate(service.rounds)]
    return {
        "ratio": service.total.per_s / best.total.per_s,
        "ratio_median_of_rounds": percentile(per_round, 50),
        "ratio_by_round": per_round,
    }


# ------------------------------------------------------------------ load generator (child process)


@dataclass(frozen=True)
class Load:
    target: str
    rpc: str  # "embed", "retrieve_vector" or "retrieve_text"
    clients: int
    duration_s: float
    max_requests: int
    warmup_s: float = 0.0
    dimension: int = 384
    seed: int = 0


def run_round(load: Load) -> tuple[LoadResult, float]:
    """One round's LoadResult and the CPU seconds it cost; runs in the child process."""
    cpu_started = time.process_time()
    result = asyncio.run(_run_round(load))
    return result, time.process_time() - cpu_started


async def _run_round(load: Load) -> LoadResult:
    import grpc

    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    # Each round's texts are new (seed), and warm-up indices never repeat measured ones (run_load).
    offset = load.seed * 10_000_000
    async with grpc.aio.insecure_channel(load.target) as channel:
        if load.rpc == "embed":
            embed = pb_grpc.EmbedServiceStub(channel).Embed

            async def call(i: int) -> Sample:
                await embed(pb.EmbedRequest(texts=[short_text(offset + i)]))
                return Sample(items=1)

        elif load.rpc == "retrieve_vector":
            retrieve = pb_grpc.RetrieveServiceStub(channel).Retrieve
            rng = np.random.default_rng(load.seed)
            vectors = rng.normal(size=(4096, load.dimension)).astype(np.float32).tolist()

            async def call(i: int) -> Sample:
                values = vectors[i % len(vectors)]
                await retrieve(pb.RetrieveRequest(vector=pb.Vector(values=values), top_k=TOP_K))
                return Sample(items=1)

        else:
            retrieve = pb_grpc.RetrieveServiceStub(channel).Retrieve

            async def call(i: int) -> Sample:
                await retrieve(pb.RetrieveRequest(text=short_text(offset + i), top_k=TOP_K))
                return Sample(items=1)

        return await run_load(call, load.clients, load.duration_s, load.max_requests, warmup_s=load.warmup_s)


class LoadGenerator:
    """One child process (started once, imports paid once) that runs load rounds."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    async def run(self, load: Load, into: Tally) -> None:
        cpu_started = time.process_time()
        result, client_cpu = await asyncio.get_running_loop().run_in_executor(self._pool, run_round, load)
        into.cpu_s += time.process_time() - cpu_started
        into.client_cpu_s += client_cpu
        into.items += result.items
        into.seconds += result.wall_s
        into.latencies_s.extend(m.latency_s for m in result.ok)
        into.codes.update(result.non_ok)

    def close(self) -> None:
        self._pool.shutdown()


def _raw_round(work: Callable[[], int], seconds: float, into: Tally) -> None:
    """Repeats `work` (which returns how many items it did) for about `seconds`."""
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        call_started = time.perf_counter()
        into.items += work()
        into.latencies_s.append(time.perf_counter() - call_started)
    into.seconds += time.perf_counter() - started
    into.cpu_s += time.process_time() - cpu_started


# ------------------------------------------------------------------ the service under test


def _service_settings(**overrides: Any) -> Any:
    """The Embed and Retrieve rows measure compute: every cache off, no interceptors, no generator."""
    return bench_settings(cache_backend="none", **overrides)


def _mean_batch(engine: Any) -> float:
    return float(engine.stats.items / max(engine.stats.batches, 1))


def _raw_sentence_transformer() -> Any:
    from sentence_transformers import SentenceTransformer

    from rag_grpc.engines.model_files import BUNDLED_EMBEDDER, resolve_embedder, resolve_torch_device

    model = SentenceTransformer(
        resolve_embedder(BUNDLED_EMBEDDER), device=resolve_torch_device("auto"), local_files_only=True
    )
    return model.eval()


def _table(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _row(name: str, tally: Tally, note: str = "") -> tuple[str, ...]:
    s = tally.summary()
    cpu = f"{s['cpu_ms_per_item']:.2f}"
    if tally.client_cpu_s:
        cpu += f" + {s['client_cpu_ms_per_item']:.2f}"
    if tally.codes:
        note = (
            f"{note}; non-OK: {format_codes(tally.codes)}" if note else f"non-OK: {format_codes(tally.codes)}"
        )
    return (name, f"{s['per_s']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", cpu, note)


def _ratio_row(name: str, ratios: dict[str, Any], note: str) -> tuple[str, ...]:
    median = f"median of rounds {ratios['ratio_median_of_rounds']:.2f}"
    return (name, f"{ratios['ratio']:.2f}", "", "", "", f"{median}; {note}" if note else median)


# ------------------------------------------------------------------ Embed


async def bench_embed(
    clients: int = 64,
    rounds: int = 6,
    service_s: float = 3.0,
    raw_s: float = 1.0,
    warmup_s: float = 2.0,
    max_requests: int = 50_000,
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128),
    int8: bool = True,
) -> dict[str, Any]:
    """Embed texts/s with `clients` concurrent one-text callers vs raw encode at its best batch size;
    with `int8`, also a server with embedder_precision=int8 and its raw engine at batch 64."""
    model = _raw_sentence_transformer()

    def encode(batch_size: int) -> Callable[[], int]:
        texts = [short_text(i) for i in range(batch_size)]

        def work() -> int:
            model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return batch_size

        return work

    raw = {bs: Series() for bs in batch_sizes}
    service, service_int8, raw_int8 = Series(), Series(), Series()
    int8_texts = [short_text(i) for i in range(64)]
    generator = LoadGenerator()
    try:
        async with AsyncExitStack() as stack:
            served = await stack.enter_async_context(serving(_service_settings(), with_generator=False))
            served_int8 = None
            if int8:
                # The int8 server's engine (exported on first use, then from model_cache_dir) also serves the
                # raw int8 rounds, between load phases, as raw encode shares the float32 server's process.
                served_int8 = await stack.enter_async_context(
                    serving(_service_settings(embedder_precision="int8"), with_generator=False)
                )
                int8_engine = served_int8.engines.embedder.inner  # under the micro-batcher

                def encode_int8() -> int:
                    int8_engine._encode(int8_texts)
                    return len(int8_texts)

            for n in range(rounds):
                warm = warmup_s if n == 0 else 0.0
                for bs, series in raw.items():
                    _raw_round(encode(bs), raw_s, series.new_round())
                load = Load(served.target, "embed", clients, service_s, max_requests, warm, seed=n)
                await generator.run(load, service.new_round())
                if served_int8 is not None:
                    _raw_round(encode_int8, raw_s, raw_int8.new_round())
                    load = Load(served_int8.target, "embed", clients, service_s, max_requests, warm, seed=n)
                    await generator.run(load, service_int8.new_round())
            mean_batch = _mean_batch(served.engines.embedder)
            mean_batch_int8 = _mean_batch(served_int8.engines.embedder) if served_int8 else 0.0
    finally:
        generator.close()

    best = max(raw, key=lambda bs: raw[bs].total.per_s)
    ratios = ratio_summary(service, *raw.values())
    result = {
        "clients": clients,
        "service": service.total.summary(),
        "service_mean_batch": mean_batch,
        "raw_best_batch_size": best,
        "raw_texts_per_s": raw[best].total.per_s,
        "raw_texts_per_s_by_batch_size": {bs: series.total.per_s for bs, series in raw.items()},
        **ratios,
        "target_ratio": 0.85,
    }
    int8_rows: list[tuple[str, ...]] = []
    if int8:
        int8_ratios = ratio_summary(service_int8, service)
        result |= {
            "service_int8": service_int8.total.summary(),
            "service_int8_mean_batch": mean_batch_int8,
            "raw_int8_texts_per_s": raw_int8.total.per_s,
            "int8_over_float32": int8_ratios["ratio"],
            "int8_over_float32_median_of_rounds": int8_ratios["ratio_median_of_rounds"],
        }
        int8_rows = [
            _row("service, embedder_precision=int8", service_int8.total, f"mean batch {mean_batch_int8:.1f}"),
            _row("raw int8 engine, batch 64", raw_int8.total, "ONNX Runtime"),
            _ratio_row("ratio int8 service / float32 service", int8_ratios, ""),
        ]
    _table(
        f"Embed: {clients} concurrent callers x 1 short text vs raw SentenceTransformer.encode ({rounds} rounds)",
        [
            ("", "texts/s", "p50 ms", "p99 ms", "CPU ms/text", "note"),
            _row("service (gRPC, micro-batched)", service.total, f"mean batch {mean_batch:.1f}"),
            *[
                _row(f"raw encode, batch {bs}", series.total, "best" if bs == best else "")
                for bs, series in raw.items()
            ],
            _ratio_row("ratio service / best raw", ratios, "target >= 0.85"),
            *int8_rows,
        ],
    )
    return result


# ------------------------------------------------------------------ Retrieve


async def bench_retrieve(
    documents: int = 100_000,
    dimension: int = 384,
    clients: int = 64,
    rounds: int = 6,
    service_s: float = 3.0,
    raw_s: float = 3.0,
    warmup_s: float = 2.0,
    max_requests: int = 50_000,
) -> dict[str, Any]:
    """Retrieve QPS and latency by vector and by text vs raw batched FAISS search on the same vectors."""
    import faiss

    from rag_grpc.domain import Document

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(documents, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    raw_index = faiss.IndexFlatIP(dimension)
    raw_index.add(vectors)
    queries = rng.normal(size=(clients, dimension)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    model = _raw_sentence_transformer()
    texts = [short_text(i) for i in range(clients)]

    def search_batch() -> int:
        raw_index.search(queries, TOP_K)
        return clients

    def encode_and_search() -> int:
        embedded = model.encode(
            texts,
            batch_size=clients,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        raw_index.search(embedded, TOP_K)
        return clients

    # In a raw batch every query waits for the whole call, so the call's time is each query's latency.
    raw_vector, raw_text, by_vector, by_text = Series(), Series(), Series(), Series()
    generator = LoadGenerator()
    try:
        async with serving(_service_settings(), with_generator=False) as served:
            target, engines = served.target, served.engines
            store = engines.vector_store
            for start in range(0, documents, 10_000):
                ids = range(start, min(start + 10_000, documents))
                batch = [Document(id=f"doc-{i}", text=f"document {i}") for i in ids]
                await store.upsert(batch, vectors[ids.start : ids.stop])
            for n in range(rounds):
                warm = warmup_s if n == 0 else 0.0
                _raw_round(search_batch, raw_s, raw_vector.new_round())
                load = Load(target, "retrieve_vector", clients, service_s, max_requests, warm, dimension, n)
                await generator.run(load, by_vector.new_round())
                _raw_round(encode_and_search, raw_s, raw_text.new_round())
                load = Load(target, "retrieve_text", clients, service_s, max_requests, warm, dimension, n)
                await generator.run(load, by_text.new_round())
            mean_search_batch = _mean_batch(store)
    finally:
        generator.close()

    vector_ratios, text_ratios = ratio_summary(by_vector, raw_vector), ratio_summary(by_text, raw_text)
    result = {
        "documents": documents,
        "dimension": dimension,
        "clients": clients,
        "top_k": TOP_K,
        "by_vector": by_vector.total.summary(),
        "by_text": by_text.total.summary(),
        "service_mean_search_batch": mean_search_batch,
        "raw_vector": raw_vector.total.summary(),
        "raw_text": raw_text.total.summary(),
        **{f"vector_{k}": v for k, v in vector_ratios.items()},
        **{f"text_{k}": v for k, v in text_ratios.items()},
        "target_vector_ratio": 0.8,
    }
    _table(
        f"Retrieve: {documents:,} x {dimension} flat index, {clients} concurrent callers, top_k {TOP_K} ({rounds} rounds)",
        [
            ("", "QPS", "p50 ms", "p99 ms", "CPU ms/query", "note"),
            _row("service by vector", by_vector.total, f"mean search batch {mean_search_batch:.1f}"),
            _row(f"raw FAISS search, {clients} per call", raw_vector.total, "latency = one call"),
            _ratio_row("ratio by vector", vector_ratios, "target >= 0.8"),
            _row("service by text", by_text.total, "embed + search"),
            _row(f"raw encode + search, {clients} per call", raw_text.total, "latency = one call"),
            _ratio_row("ratio by text", text_ratios, ""),
        ],
    )
    return result


# ------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="two short rounds and a 20k-document index (smoke run)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    phases: dict[str, Any] = (
        {"rounds": 2, "service_s": 2.0, "raw_s": 0.5, "warmup_s": 1.0} if args.quick else {}
    )

    async def run() -> dict[str, Any]:
        embed = await bench_embed(**phases)
        retrieve = await bench_retrieve(documents=20_000 if args.quick else 100_000, **phases)
        return {"embed": embed, "retrieve": retrieve}

    results = asyncio.run(run())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
