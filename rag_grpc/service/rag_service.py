"""RagService: what the API does, independent of gRPC. Servicers convert protobuf to these calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing

import numpy as np

from rag_grpc.domain import (
    ChatMessage,
    DeltaEvent,
    Document,
    EmbeddingBatch,
    EmbedResult,
    FinalEvent,
    FinishReason,
    GenerateEvent,
    GenerateInput,
    GenerationRequest,
    RetrievalInput,
    RetrieveInput,
    SamplingOptions,
    SearchQuery,
    SearchResult,
    SnapshotInfo,
    SourcesEvent,
    WriteResult,
)
from rag_grpc.engines import Engines, Generator
from rag_grpc.errors import FailedPrecondition, NotFound
from rag_grpc.metrics import ServiceMetrics
from rag_grpc.service import cache_entries as entries
from rag_grpc.service.cache import CacheKind, ResultCache
from rag_grpc.service.cache_entries import CachedAnswer, IndexState
from rag_grpc.service.prompt import grounded_messages, retrieval_query
from rag_grpc.service.validation import Validator
from rag_grpc.settings import Settings


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _replay(answer: CachedAnswer, started: float) -> Iterator[GenerateEvent]:
    """A cached answer as a stream of the original's shape; the final event has the replay's own timings."""
    retrieval_ms = ttft_ms = 0.0
    if answer.sources is not None:
        retrieval_ms = _ms_since(started)
        yield answer.sources
    for delta in answer.deltas:
        if not ttft_ms:
            ttft_ms = _ms_since(started)
        yield delta
    yield FinalEvent(
        finish_reason=answer.finish_reason,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        retrieval_ms=retrieval_ms,
        time_to_first_token_ms=ttft_ms,
        total_ms=_ms_since(started),
        request_id=uuid.uuid4().hex,
        model=answer.model,
        cached=True,
    )


class RagService:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        cache: ResultCache | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.cache = cache or ResultCache.disabled()
        # Without a registry of its own the metrics are recorded where nobody scrapes them.
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.metrics.watch_index(lambda: engines.vector_store.size)
        self._validate = Validator(settings)
        # Cached retrieval results are valid for this process's index only (see cache_entries.py).
        self._index_identity = uuid.uuid4().hex

    def _index_state(self, version: int) -> IndexState:
        return IndexState(self._index_identity, version)

    # --- embeddings and retrieval

    async def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Every embedding the service computes (cache hits excluded) goes through here."""
        batch = await self.engines.embedder.embed(texts)
        self.metrics.embed_tokens.inc(sum(batch.token_counts))
        return batch

    async def embed(self, texts: Sequence[str]) -> EmbedResult:
        texts = self._validate.texts("texts", texts)
        batch, cached = await self._embed_queries(texts)
        embedder = self.engines.embedder
        return EmbedResult(batch, model=embedder.info.model, dimension=embedder.dimension, cached=cached)

    async def _embed_queries(self, texts: list[str]) -> tuple[EmbeddingBatch, list[bool]]:
        """Embeddings through the cache, and which of them it served.

        Documents being stored bypass this: their texts rarely recur and would evict the queries that do.
        """
        embedder = self.engines.embedder
        if not self.cache.enabled(CacheKind.EMBEDDING):
            return await self._embed(texts), [False] * len(texts)
        keys = [entries.embedding_key(embedder.info.model, text) for text in texts]
        found = await self.cache.get_many(CacheKind.EMBEDDING, keys)
        missing = [i for i, value in enumerate(found) if value is None]
        vectors = np.empty((len(texts), embedder.dimension), dtype=np.float32)
        counts = [0] * len(texts)
        for i, value in enumerate(found):
            if value is not None:
                vectors[i], counts[i] = entries.decode_embedding(value)
        if missing:
            fresh = await self._embed([texts[i] for i in missing])
            for row, i in enumerate(missing):
                vectors[i], counts[i] = fresh.vectors[row], fresh.token_counts[row]
            fresh_entries = [(keys[i], entries.encode_embedding(vectors[i], counts[i])) for i in missing]
            await self.cache.set_many(CacheKind.EMBEDDING, fresh_entries)
        return EmbeddingBatch(vectors=vectors, token_counts=counts), [value is not None for value in found]

    async def retrieve(self, request: RetrieveInput) -> SearchResult:
        started = time.perf_counter()
        result = await self._retrieve(request)
        self.metrics.retrieve_seconds.observe(time.perf_counter() - started)
        self.metrics.retrieve_results.observe(len(result.hits))
        return result

    async def _retrieve(self, request: RetrieveInput) -> SearchResult:
        store = self.engines.vector_store
        text, query, top_k = self._validate.retrieve(request, store.dimension)
        filter_, min_score = dict(request.filter), request.min_score
        use_cache = self.cache.enabled(CacheKind.RETRIEVAL)
        if use_cache:
            subject = (
                entries.vector_query(query.vector)
                if query is not None
                else entries.text_query(self.engines.embedder.info.model, text or "")
            )

            def cache_key(index_version: int) -> str:
                return entries.retrieval_key(
                    self._index_state(index_version), subject, top_k, filter_, min_score
                )

            cached = await self.cache.get(CacheKind.RETRIEVAL, cache_key(store.version))
            if cached is not None:
                return entries.decode_search_result(cached)
        if query is None:
            assert text is not None
            vector = (await self._embed_queries([text]))[0].vectors[0]
            query = SearchQuery(vector=vector, top_k=top_k, filter=filter_, min_score=min_score)
        (result,) = await store.search([query])
        if use_cache:
            # Stored under the version that answered, so a write since the lookup is never hidden.
            encoded = entries.encode_search_result(result)
            await self.cache.set(CacheKind.RETRIEVAL, cache_key(result.index_version), encoded)
        return result

    # --- documents

    async def upsert(self, documents: Sequence[Document], field: str = "documents") -> WriteResult:
        documents = self._validate.documents(field, documents)
        batch = await self._embed([d.text for d in documents])
        version = await self.engines.vector_store.upsert(documents, batch.vectors)
        return WriteResult(count=len(documents), index_version=version)

    async def delete(self, ids: Sequence[str]) -> WriteResult:
        ids = self._validate.ids("ids", ids)
        if len(set(ids)) != len(ids):
            ids = list(dict.fromkeys(ids))
        version = await self.engines.vector_store.delete(ids)
        return WriteResult(count=len(ids), index_version=version)

    async def ingest(self, batches: AsyncIterator[Sequence[Document]]) -> tuple[int, int, int]:
        """Stores each batch as it arrives; returns (documents, batches, index version).

        Batches acknowledged before a bad one stay stored: each is its own atomic write.
        """
        documents = count = 0
        version = self.engines.vector_store.version
        async for batch in batches:
            result = await self.upsert(batch, field=f"requests[{count}].documents")
            documents += result.count
            count += 1
            version = result.index_version
        return documents, count, version

    async def snapshot(self) -> SnapshotInfo:
        # Looked up by name, not isinstance(Snapshotter): wrappers such as the search batcher pass it through
        # with __getattr__, which runtime protocol checks do not see from Python 3.12 on.
        snapshot = getattr(self.engines.vector_store, "snapshot", None)
        if snapshot is None:
            raise FailedPrecondition(
                "snapshot: the index is kept in memory only; start the server with a data_dir"
            )
        info: SnapshotInfo = await snapshot()
        return info

    # --- generation

    def generator_for(self, model: str) -> Generator:
        generators = self.engines.generators
        if not generators:
            raise FailedPrecondition("model: this server runs without a generator (generator_backend=none)")
        if not model:
            return generators[self.engines.default_generator]
        if model not in generators:
            raise NotFound(f"model: unknown generator {model[:80]!r}; available: {sorted(generators)}")
        return generators[model]

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        started = time.perf_counter()
        messages = self._validate.messages(request)
        sampling = self._validate.sampling(request)
        retrieval = self._validate.retrieval(request.retrieval) if request.retrieval is not None else None
        generator = self.generator_for(request.model)
        if self.cache.enabled(CacheKind.GENERATION) and entries.is_deterministic(sampling):
            events = self._generate_through_cache(started, messages, sampling, retrieval, generator)
        else:
            events = self._generate(started, messages, sampling, retrieval, generator)
        async with aclosing(events):
            async for event in events:
                yield event

    async def _generate_through_cache(
        self,
        started: float,
        messages: list[ChatMessage],
        sampling: SamplingOptions,
        retrieval: RetrievalInput | None,
        generator: Generator,
    ) -> AsyncIterator[GenerateEvent]:
        """Replays a cached answer, or generates one and caches it once it finished (not if cancelled)."""

        def cache_key(index_version: int | None) -> str:
            index = None if index_version is None else self._index_state(index_version)
            return entries.generation_key(generator.info.model, messages, sampling, retrieval, index)

        cached = await self.cache.get(
            CacheKind.GENERATION, cache_key(self.engines.vector_store.version if retrieval else None)
        )
        if cached is not None:
            for event in _replay(entries.decode_answer(cached), started):
                yield event
            return
        sources: SourcesEvent | None = None
        deltas: list[DeltaEvent] = []
        async with aclosing(self._generate(started, messages, sampling, retrieval, generator)) as events:
            async for event in events:
                if isinstance(event, SourcesEvent):
                    sources = event
                elif isinstance(event, DeltaEvent):
                    deltas.append(event)
                elif event.finish_reason is not FinishReason.CANCELLED:
                    # Stored before the final event goes out: a caller may stop reading right after it.
                    answer = CachedAnswer(
                        sources,
                        deltas,
                        event.finish_reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.model,
                    )
                    key = cache_key(sources.index_version if sources else None)
                    await self.cache.set(CacheKind.GENERATION, key, entries.encode_answer(answer))
                yield event

    async def _generate(
        self,
        started: float,
        messages: list[ChatMessage],
        sampling: SamplingOptions,
        retrieval: RetrievalInput | None,
        generator: Generator,
    ) -> AsyncIterator[GenerateEvent]:
        retrieval_ms = 0.0
        if retrieval is not None:
            result = await self.retrieve(
                RetrieveInput(
                    text=retrieval_query(messages),
                    vector=None,
                    top_k=retrieval.top_k,
                    filter=retrieval.filter,
                    min_score=retrieval.min_score,
                )
            )
            retrieval_ms = _ms_since(started)
            yield SourcesEvent(hits=result.hits, index_version=result.index_version)
            messages = grounded_messages(
                messages, result.hits, generator.control_tokens, self.settings.max_grounding_chars
            )

        request_id = uuid.uuid4().hex
        engine_request = GenerationRequest(request_id=request_id, messages=messages, sampling=sampling)
        model = generator.info.model
        ttft_ms = 0.0
        completion_tokens = 0
        last_delta_at = 0.0
        finish = "abort"  # what is recorded if the caller goes away (GeneratorExit/CancelledError) first
        try:
            async with aclosing(generator.generate(engine_request)) as chunks:
                async for chunk in chunks:
                    completion_tokens += chunk.token_count
                    if chunk.text:
                        now = time.perf_counter()
                        if not ttft_ms:
                            ttft_ms = (now - started) * 1000.0
                            self.metrics.time_to_first_token.labels(model).observe(now - started)
                        else:
                            self.metrics.inter_token_latency.labels(model).observe(now - last_delta_at)
                        last_delta_at = now
                        yield DeltaEvent(text=chunk.text, token_count=chunk.token_count)
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason.value
                        self.metrics.prompt_tokens.labels(model).inc(chunk.prompt_tokens)
                        yield FinalEvent(
                            finish_reason=chunk.finish_reason,
                            prompt_tokens=chunk.prompt_tokens,
                            completion_tokens=completion_tokens,
                            retrieval_ms=retrieval_ms,
                            time_to_first_token_ms=ttft_ms,
                            total_ms=_ms_since(started),
                            request_id=request_id,
                            model=model,
                        )
                        return
            # An engine that ends without a finish reason was shut down under us.
            finish = FinishReason.CANCELLED.value
            yield FinalEvent(
                FinishReason.CANCELLED,
                0,
                completion_tokens,
                retrieval_ms,
                ttft_ms,
                _ms_since(started),
                request_id,
                model,
            )
        except Exception:
            finish = "error"
            raise
        finally:
            self.metrics.finished.labels(model, finish).inc()
            self.metrics.generation_tokens.labels(model).inc(completion_tokens)
            self.metrics.request_generation_tokens.labels(model).observe(completion_tokens)
