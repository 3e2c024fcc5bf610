"""Builds the engines that the settings name. The only place that knows concrete engine classes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from rag_grpc.engines.base import Embedder, Generator, VectorStore
from rag_grpc.engines.batching import BatchingEmbedder, BatchingVectorStore
from rag_grpc.engines.micro_batcher import BatcherStats
from rag_grpc.engines.model_files import (
    BUNDLED_GENERATOR,
    converted_model_dir,
    resolve_embedder,
    resolve_generator_source,
    resolve_torch_device,
)
from rag_grpc.settings import Settings


@dataclass(frozen=True)
class Engines:
    embedder: Embedder
    vector_store: VectorStore
    # Keyed by model id; the first is the default for requests that name none. Empty with generator_backend=none.
    generators: dict[str, Generator]

    @property
    def default_generator(self) -> Generator:
        """The generator for requests that name no model (FailedPrecondition-worthy to ask with none)."""
        return next(iter(self.generators.values()))


def build_embedder(settings: Settings) -> Embedder:
    from rag_grpc.engines.sentence_transformers_embedder import SentenceTransformerEmbedder

    model_id = settings.embedder_model.removeprefix("bundled:")
    return SentenceTransformerEmbedder(
        resolve_embedder(settings.embedder_model), resolve_torch_device(settings.embedder_device), model_id
    )


def build_vector_store(settings: Settings, dimension: int) -> VectorStore:
    from rag_grpc.engines.faiss_store import FaissVectorStore

    store = FaissVectorStore(dimension, settings.vector_store_device)
    if settings.data_dir is None:
        return store
    from rag_grpc.storage import DurableVectorStore

    return DurableVectorStore(
        store,
        settings.data_dir,
        snapshot_interval_s=settings.snapshot_interval_s,
        snapshot_wal_max_bytes=settings.snapshot_wal_max_bytes,
    )


def with_embed_batching(
    settings: Settings, embedder: Embedder, stats: BatcherStats | None = None
) -> BatchingEmbedder:
    return BatchingEmbedder(
        embedder,
        max_batch_size=settings.embed_batch_max_size,
        max_wait_s=settings.embed_batch_max_wait_ms / 1000.0,
        max_queued_texts=settings.embed_queue_max_texts,
        stats=stats,
    )


def with_search_batching(
    settings: Settings, store: VectorStore, stats: BatcherStats | None = None
) -> BatchingVectorStore:
    return BatchingVectorStore(
        store,
        max_batch_size=settings.search_batch_max_size,
        max_wait_s=settings.search_batch_max_wait_ms / 1000.0,
        max_queued_queries=settings.search_queue_max_queries,
        stats=stats,
    )


async def build_generator(settings: Settings) -> Generator:
    model_id = Path(settings.generator_model.removeprefix("bundled:")).name.removesuffix(".gguf")
    source = resolve_generator_source(settings.generator_model)
    if settings.generator_model == BUNDLED_GENERATOR:
        model_id = "SmolLM2-135M-Instruct"
    model_dir = source
    if source.suffix == ".gguf" and (
        settings.generator_backend == "transformers" or not settings.generator_tokenizer
    ):
        # Both engines load the dequantized copy: vLLM 0.33 needs an out-of-tree plugin for GGUF and
        # rebuilding a tokenizer from GGUF is slow and unreliable there.
        model_dir = await asyncio.to_thread(converted_model_dir, source, settings.model_cache_dir)
    if settings.generator_backend == "vllm":
        from rag_grpc.engines.vllm_generator import VllmGenerator

        return VllmGenerator(
            model=str(model_dir),
            tokenizer=settings.generator_tokenizer,
            model_id=model_id,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            max_model_len=settings.vllm_max_model_len,
        )
    from rag_grpc.engines.transformers_generator import TransformersGenerator

    return TransformersGenerator(
        model_dir,
        resolve_torch_device(settings.generator_device),
        model_id,
        # Admission lets at most this many requests reach the engine; its own queue only guards direct use.
        max_batch_size=settings.max_concurrent_generations,
        max_waiting_requests=settings.max_queued_generations,
    )


@asynccontextmanager
async def open_engines(
    settings: Settings,
    *,
    with_generator: bool = True,
    embed_stats: BatcherStats | None = None,
    search_stats: BatcherStats | None = None,
) -> AsyncIterator[Engines]:
    """Starts every engine and stops them in reverse order on exit, also after a failed start.

    `with_generator=False` (benchmarks of embedding and retrieval) leaves `generators` empty. The stats
    objects receive the micro-batchers' counts (the metrics exporter passes ones that record batch sizes).
    """
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    async with AsyncExitStack() as stack:
        generators: dict[str, Generator] = {}
        if with_generator and settings.generator_backend != "none":
            # The generator comes first: vLLM sizes its GPU memory share against what is free at its start.
            generator = await stack.enter_async_context(await build_generator(settings))
            generators[generator.info.model] = generator
        # Each batching wrapper is left before the engine it wraps, so no batch outlives its engine.
        raw_embedder = await stack.enter_async_context(build_embedder(settings))
        embedder = await stack.enter_async_context(with_embed_batching(settings, raw_embedder, embed_stats))
        # A durable store is left after the search batcher and before the embedder: its final snapshot
        # follows the last search and write.
        raw_store = await stack.enter_async_context(build_vector_store(settings, embedder.dimension))
        vector_store = await stack.enter_async_context(
            with_search_batching(settings, raw_store, search_stats)
        )
        yield Engines(embedder=embedder, vector_store=vector_store, generators=generators)
