"""Builds the engines that the settings name. The only place that knows concrete engine classes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

from rag_grpc.engines.base import Embedder, Generator, PersistableVectorStore, VectorStore
from rag_grpc.engines.batching import BatchingEmbedder, BatchingVectorStore
from rag_grpc.engines.micro_batcher import BatcherStats
from rag_grpc.engines.model_files import (
    BUNDLED_GENERATOR,
    converted_model_dir,
    resolve_embedder,
    resolve_generator_source,
    resolve_torch_device,
)
from rag_grpc.settings import EngineSettings, Settings


@dataclass(frozen=True)
class Engines:
    embedder: Embedder
    vector_store: VectorStore
    # Keyed by name (the `generators` setting; its model id when there is one generator), the default first.
    # Empty with generator_backend=none.
    generators: dict[str, Generator]

    @property
    def default_generator(self) -> Generator:
        """The generator for requests that name no model (FailedPrecondition-worthy to ask with none)."""
        return next(iter(self.generators.values()))


# Each builder matches on its backend setting, whose Literal lists the engines there are; assert_never
# makes a backend added to the Literal without a case here a type error.


def build_embedder(engines: EngineSettings) -> Embedder:
    match engines.embedder_backend:
        case "sentence-transformers":
            from rag_grpc.engines.sentence_transformers_embedder import SentenceTransformerEmbedder

            model_id = engines.embedder_model.removeprefix("bundled:")
            if engines.embedder_precision == "int8":
                # CPU only (the settings refuse embedder_device=cuda with int8; auto means the CPU here).
                from rag_grpc.engines.onnx_embedder import OnnxInt8Embedder

                return OnnxInt8Embedder(
                    Path(resolve_embedder(engines.embedder_model)),
                    engines.model_cache_dir,
                    model_id,
                    threads=engines.torch_threads,
                )
            return SentenceTransformerEmbedder(
                resolve_embedder(engines.embedder_model),
                resolve_torch_device(engines.embedder_device),
                model_id,
            )
        case _:
            assert_never(engines.embedder_backend)


def build_vector_store(settings: Settings, dimension: int) -> VectorStore:
    """The configured index, made durable when the settings name a data_dir (FAISS only: Milvus keeps
    its own write-ahead log)."""
    engines, durability = settings.engines, settings.durability
    # Persistable: data_dir wraps the store in a write-ahead log and snapshots of its contents.
    store: PersistableVectorStore
    match engines.vector_store_backend:
        case "faiss":
            from rag_grpc.engines.faiss_store import FaissVectorStore

            store = FaissVectorStore(dimension, engines.vector_store_device)
        case "milvus":
            if durability.data_dir is not None:
                raise ValueError("data_dir is for the FAISS index: Milvus keeps its own log (unset data_dir)")
            return build_milvus_store(engines, dimension)
        case _:
            assert_never(engines.vector_store_backend)
    if durability.data_dir is None:
        return store
    from rag_grpc.storage import DurableVectorStore

    return DurableVectorStore(
        store,
        durability.data_dir,
        snapshot_interval_s=durability.snapshot_interval_s,
        snapshot_wal_max_bytes=durability.snapshot_wal_max_bytes,
    )


def build_milvus_store(engines: EngineSettings, dimension: int) -> VectorStore:
    from rag_grpc.engines.index_version import IndexVersion, LocalIndexVersion, RedisIndexVersion
    from rag_grpc.engines.milvus_store import MilvusVectorStore

    version: IndexVersion = LocalIndexVersion()
    if engines.index_version_redis_url is not None:
        key = f"rag-grpc:index-version:{engines.milvus_collection}"
        version = RedisIndexVersion(engines.index_version_redis_url.get_secret_value(), key)
    token = engines.milvus_token.get_secret_value() if engines.milvus_token else ""
    return MilvusVectorStore(
        dimension, engines.milvus_uri, engines.milvus_collection, token=token, version=version
    )


def with_embed_batching(
    engines: EngineSettings, embedder: Embedder, stats: BatcherStats | None = None
) -> BatchingEmbedder:
    return BatchingEmbedder(
        embedder,
        max_batch_size=engines.embed_batch_max_size,
        max_wait_s=engines.embed_batch_max_wait_ms / 1000.0,
        max_queued_texts=engines.embed_queue_max_texts,
        stats=stats,
    )


def with_search_batching(
    engines: EngineSettings, store: VectorStore, stats: BatcherStats | None = None
) -> BatchingVectorStore:
    return BatchingVectorStore(
        store,
        max_batch_size=engines.search_batch_max_size,
        max_wait_s=engines.search_batch_max_wait_ms / 1000.0,
        max_queued_queries=engines.search_queue_max_queries,
        stats=stats,
    )


async def build_generator(settings: Settings) -> Generator:
    """The configured generator; the transformers engine's batch is sized by admission (settings.limits)."""
    engines = settings.engines
    model_id = Path(engines.generator_model.removeprefix("bundled:")).name.removesuffix(".gguf")
    source = resolve_generator_source(engines.generator_model)
    if engines.generator_model == BUNDLED_GENERATOR:
        model_id = "SmolLM2-135M-Instruct"
    model_dir = source
    if source.suffix == ".gguf" and (
        engines.generator_backend == "transformers" or not engines.generator_tokenizer
    ):
        # Both engines load the dequantized copy: vLLM 0.33 needs an out-of-tree plugin for GGUF and
        # rebuilding a tokenizer from GGUF is slow and unreliable there.
        model_dir = await asyncio.to_thread(converted_model_dir, source, engines.model_cache_dir)
    if engines.generator_backend == "remote":
        from rag_grpc.engines.remote import RemoteGenerator

        return RemoteGenerator(
            engines.generator_endpoints,
            engines.generator_tokenizer or model_dir,
            api_key=engines.generator_api_key,
            served_model=engines.generator_served_model,
            connect_timeout_s=engines.remote_connect_timeout_s,
            read_timeout_s=engines.remote_read_timeout_s,
            eject_after_failures=engines.remote_eject_after_failures,
            probe_interval_s=engines.remote_probe_interval_s,
            max_attempts=engines.remote_max_attempts,
        )
    if engines.generator_backend == "onnxruntime":
        from rag_grpc.engines.onnxruntime_generator import OnnxRuntimeGenerator
        from rag_grpc.engines.quantized_model import quantized_model_dir

        precision = engines.resolved_generator_precision
        # Built from the (dequantized) Hugging Face directory once, then reused from model_cache_dir.
        onnx_dir = await asyncio.to_thread(quantized_model_dir, model_dir, precision, engines.model_cache_dir)
        return OnnxRuntimeGenerator(
            onnx_dir,
            model_id,
            precision,
            max_batch_size=settings.limits.max_concurrent_generations,
            max_waiting_requests=settings.limits.max_queued_generations,
            threads=engines.torch_threads,
        )
    if engines.generator_backend == "vllm":
        from rag_grpc.engines.vllm_generator import VllmGenerator

        return VllmGenerator(
            model=str(model_dir),
            tokenizer=engines.generator_tokenizer,
            model_id=model_id,
            gpu_memory_utilization=engines.vllm_gpu_memory_utilization,
            max_model_len=engines.vllm_max_model_len,
            dtype=engines.vllm_dtype,
            kv_cache_memory_bytes=engines.vllm_kv_cache_memory_bytes,
            enforce_eager=engines.vllm_enforce_eager,
        )
    from rag_grpc.engines.transformers_generator import TransformersGenerator

    return TransformersGenerator(
        model_dir,
        resolve_torch_device(engines.generator_device),
        model_id,
        # Admission lets at most this many requests reach the engine; its own queue only guards direct use.
        max_batch_size=settings.limits.max_concurrent_generations,
        max_waiting_requests=settings.limits.max_queued_generations,
    )


def generator_settings(settings: Settings) -> list[tuple[str | None, Settings]]:
    """The generators to build, default first: (name, the settings that describe it). One entry named
    None (called after its model) without a `generators` list; one per entry of the list otherwise,
    each the flat settings with its backend, model and endpoints put in."""
    engines = settings.engines
    if engines.generator_backend == "none" and not engines.generators:
        return []
    if not engines.generators:
        return [(None, settings)]
    specs = sorted(engines.generators, key=lambda spec: not spec.default)
    return [
        (
            spec.name,
            settings.with_overrides(
                generators=(),
                generator_backend=spec.backend,
                generator_model=spec.model,
                generator_precision=spec.precision,
                generator_endpoints=spec.endpoints or engines.generator_endpoints,
            ),
        )
        for spec in specs
    ]


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
    engine_settings = settings.engines
    if engine_settings.torch_threads:
        import torch

        torch.set_num_threads(engine_settings.torch_threads)
    async with AsyncExitStack() as stack:
        generators: dict[str, Generator] = {}
        # Generators come first: vLLM sizes its GPU memory share against what is free at its start.
        for name, one in generator_settings(settings) if with_generator else []:
            generator = await stack.enter_async_context(await build_generator(one))
            generators[name or generator.info.model] = generator
        # Each batching wrapper is left before the engine it wraps, so no batch outlives its engine.
        raw_embedder = await stack.enter_async_context(build_embedder(engine_settings))
        embedder = await stack.enter_async_context(
            with_embed_batching(engine_settings, raw_embedder, embed_stats)
        )
        # A durable store is left after the search batcher and before the embedder: its final snapshot
        # follows the last search and write.
        raw_store = await stack.enter_async_context(build_vector_store(settings, embedder.dimension))
        vector_store = await stack.enter_async_context(
            with_search_batching(engine_settings, raw_store, search_stats)
        )
        yield Engines(embedder=embedder, vector_store=vector_store, generators=generators)
