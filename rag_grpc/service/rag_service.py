"""RagService: what the API does, independent of gRPC. Servicers convert protobuf to these calls."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, aclosing, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import structlog

from rag_grpc import __version__
from rag_grpc.domain import (
    ChatMessage,
    DeltaEvent,
    Document,
    EmbedderDescription,
    EmbeddingBatch,
    EmbedResult,
    FinalEvent,
    FinishReason,
    GenerateEvent,
    GenerateInput,
    GenerationChunk,
    GenerationRequest,
    Hit,
    IndexDescription,
    IngestResult,
    RequestContext,
    RequestLimits,
    RetrievalOptions,
    RetrieveInput,
    SamplingOptions,
    SearchQuery,
    SearchResult,
    ServiceInfo,
    SnapshotInfo,
    SourcesEvent,
    WriteResult,
)
from rag_grpc.engines import Embedder, Engines, Generator, VectorStore
from rag_grpc.errors import FailedPrecondition, NotFound
from rag_grpc.limits.admission import Admission
from rag_grpc.metrics import ServiceMetrics
from rag_grpc.service import cache_entries as entries
from rag_grpc.service.cache import CacheKind, ResultCache
from rag_grpc.service.cache_entries import CachedAnswer, IndexState
from rag_grpc.service.grounding import Grounding, abstention, select_sources
from rag_grpc.service.prompt import grounded_messages, retrieval_query
from rag_grpc.service.routing import Router, RouteSignals
from rag_grpc.service.validation import Validator
from rag_grpc.settings import AUTO_MODEL, Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

log = structlog.get_logger(__name__)

# What _span gives while traces are off: one shared context manager that does nothing.
_NO_SPAN: nullcontext[None] = nullcontext()


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


@dataclass(slots=True)
class _Answer:
    """What one Generate call has produced so far; builds its FinalEvent (the only place one is built)."""

    request_id: str
    model: str  # the generator's name; empty until the router chose one
    route: str = ""  # why the router chose it (requests that asked for "auto")
    started: float = field(default_factory=time.perf_counter)
    retrieval_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def final(self, finish_reason: FinishReason, cached: bool = False) -> FinalEvent:
        return FinalEvent(
            finish_reason=finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            retrieval_ms=self.retrieval_ms,
            time_to_first_token_ms=self.time_to_first_token_ms,
            total_ms=_ms_since(self.started),
            request_id=self.request_id,
            model=self.model,
            cached=cached,
            route=self.route,
        )


def _replay(cached: CachedAnswer, answer: _Answer) -> Iterator[GenerateEvent]:
    """A cached answer as a stream of the original's shape; the final event has the replay's own timings."""
    # A routed request's cache entry is shared by the whole route, so the entry says who answered.
    answer.model, answer.route = cached.model, cached.route
    if cached.sources is not None:
        answer.retrieval_ms = _ms_since(answer.started)
        yield cached.sources
    for delta in cached.deltas:
        if not answer.time_to_first_token_ms:
            answer.time_to_first_token_ms = _ms_since(answer.started)
        yield delta
    answer.prompt_tokens, answer.completion_tokens = cached.prompt_tokens, cached.completion_tokens
    yield answer.final(cached.finish_reason, cached=True)


class RagService:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        cache: ResultCache | None = None,
        metrics: ServiceMetrics | None = None,
        admission: Admission | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`admission` bounds the generations the engines work on at once (built from the settings
        when not given; the server passes one whose refusals it counts). `tracer`: spans for the steps of
        each call when traces are on (rag_grpc/tracing.py); None costs nothing."""
        self.engines = engines
        self.settings = settings
        self.cache = cache or ResultCache.disabled()
        self.admission = admission or Admission.for_generations(settings.limits)
        # Without a registry of its own the metrics are recorded where nobody scrapes them.
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.metrics.watch_index(lambda: engines.vector_store.size, lambda: engines.vector_store.version)
        self._validate = Validator(settings.limits)
        # Cached retrieval results are valid for this process's index only (see cache_entries.py).
        self._index_identity = uuid.uuid4().hex
        self._tracer = tracer
        self.router = _router(settings, engines)

    def _span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span | None]:
        """A child of the current span while traces are on, for a step that does not yield; else nothing."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def _index_state(self, version: int) -> IndexState:
        return IndexState(self._index_identity, version)

    def info(self) -> ServiceInfo:
        embedder, store, limits = self.engines.embedder, self.engines.vector_store, self.settings.limits
        return ServiceInfo(
            version=__version__,
            embedder=EmbedderDescription(embedder.info, embedder.dimension, embedder.max_input_tokens),
            generators=[generator.info for generator in self.engines.generators.values()],
            index=IndexDescription(store.info, store.size, store.version, store.dimension),
            # The reported limits are the settings of the same names.
            limits=RequestLimits(
                **{f.name: getattr(limits, f.name) for f in dataclasses.fields(RequestLimits)}
            ),
        )

    async def engine_health(self) -> dict[str, str | None]:
        """What is wrong with each engine (None when it is healthy), keyed "embedder", "vector_store" and
        "generator:<model>"."""
        engines: dict[str, Embedder | VectorStore | Generator] = {
            "embedder": self.engines.embedder,
            "vector_store": self.engines.vector_store,
            **{f"generator:{model}": generator for model, generator in self.engines.generators.items()},
        }
        problems: dict[str, str | None] = {}
        for name, engine in engines.items():
            try:
                await engine.check_health()
                problems[name] = None
            except Exception as exc:  # noqa: BLE001 - any failure to answer is a health problem to report
                problems[name] = str(exc) or type(exc).__name__
        return problems

    # --- embeddings and retrieval

    async def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Every embedding the service computes (cache hits excluded) goes through here."""
        model = self.engines.embedder.info.model
        with self._span("embed", {"gen_ai.request.model": model, "rag.embed.texts": len(texts)}) as span:
            batch = await self.engines.embedder.embed(texts)
            if span is not None:
                span.set_attribute("gen_ai.usage.input_tokens", sum(batch.token_counts))
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
        with self._span("cache.lookup", {"rag.cache": CacheKind.EMBEDDING.value}) as span:
            found = await self.cache.get_many(CacheKind.EMBEDDING, keys)
            missing = [i for i, value in enumerate(found) if value is None]
            if span is not None:
                span.set_attributes(
                    {"rag.cache.hits": len(found) - len(missing), "rag.cache.misses": len(missing)}
                )
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
        query, options = self._validate.retrieve(request, self.engines.vector_store.dimension)
        return await self._search(query, options)

    async def _search(self, query: str | np.ndarray, options: RetrievalOptions) -> SearchResult:
        """Searches for a text (embedded here) or a unit vector, through the retrieval cache."""
        started = time.perf_counter()
        with self._span("retrieve", {"rag.retrieve.top_k": options.top_k}) as span:
            result = await self._search_through_cache(query, options)
            if span is not None:
                span.set_attributes(
                    {"rag.retrieve.hits": len(result.hits), "rag.index.version": result.index_version}
                )
        self.metrics.retrieve_seconds.observe(time.perf_counter() - started)
        self.metrics.retrieve_results.observe(len(result.hits))
        return result

    async def _search_through_cache(self, query: str | np.ndarray, options: RetrievalOptions) -> SearchResult:
        store = self.engines.vector_store
        filter_, min_score = dict(options.filter), options.min_score
        use_cache = self.cache.enabled(CacheKind.RETRIEVAL)
        if use_cache:
            subject = (
                entries.text_query(self.engines.embedder.info.model, query)
                if isinstance(query, str)
                else entries.vector_query(query)
            )

            def cache_key(index_version: int) -> str:
                return entries.retrieval_key(
                    self._index_state(index_version), subject, options.top_k, filter_, min_score
                )

            with self._span("cache.lookup", {"rag.cache": CacheKind.RETRIEVAL.value}) as span:
                cached = await self.cache.get(CacheKind.RETRIEVAL, cache_key(await store.current_version()))
                if span is not None:
                    span.set_attribute("rag.cache.hit", cached is not None)
            if cached is not None:
                return entries.decode_search_result(cached)
        vector = (await self._embed_queries([query]))[0].vectors[0] if isinstance(query, str) else query
        search = SearchQuery(vector=vector, top_k=options.top_k, filter=filter_, min_score=min_score)
        with self._span("index.search", {"rag.index.size": store.size}):
            (result,) = await store.search([search])
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

    async def ingest(self, batches: AsyncIterator[Sequence[Document]]) -> IngestResult:
        """Stores each batch as it arrives. Batches stored before a bad one stay stored: each is its own
        atomic write."""
        documents = count = 0
        version = self.engines.vector_store.version
        async for batch in batches:
            result = await self.upsert(batch, field=f"requests[{count}].documents")
            documents += result.count
            count += 1
            version = result.index_version
        return IngestResult(documents=documents, batches=count, index_version=version)

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
        return self.engines.generators[self._generator_name(model)]

    def _generator_name(self, model: str) -> str:
        """The generator a request names ("" for the default); "" again when the router is to choose."""
        generators = self.engines.generators
        if not generators:
            raise FailedPrecondition("model: this server runs without a generator (generator_backend=none)")
        if model == AUTO_MODEL or (not model and self.settings.routing.route_unnamed):
            if self.router is None:
                raise FailedPrecondition(
                    "model: 'auto' needs a routing policy (route_small_model and route_big_model)"
                )
            return ""
        if not model:
            return next(iter(generators))
        if model not in generators:
            raise NotFound(f"model: unknown generator {model[:80]!r}; available: {sorted(generators)}")
        return model

    def _grounding(self, query: str, hits: Sequence[Hit]) -> Grounding:
        limits = self.settings.limits
        if not limits.grounding_check:
            return Grounding(list(hits[: limits.grounding_max_sources]))
        return select_sources(
            query,
            hits,
            relative_floor=limits.grounding_relative_floor,
            max_sources=limits.grounding_max_sources,
        )

    def _abstain(self, answer: _Answer, grounding: Grounding) -> Iterator[GenerateEvent]:
        """The answer when the documents cannot ground one: said by the service, no generator runs."""
        answer.model = ""
        self.metrics.abstained.inc()
        answer.time_to_first_token_ms = _ms_since(answer.started)
        yield DeltaEvent(text=abstention(grounding), token_count=0)
        yield answer.final(FinishReason.STOP)

    def _route(self, answer: _Answer, query: str, hits: Sequence[Hit] | None) -> None:
        """Chooses the generator of a request that asked for "auto", once its sources are known."""
        assert self.router is not None
        route = self.router.route(RouteSignals.of(query, hits))
        answer.model, answer.route = route.model, route.reason
        self.metrics.routes.labels(route.model, route.reason).inc()
        log.info("route", model=route.model, reason=route.reason, difficulty=round(route.difficulty, 3))

    async def generate(
        self, request: GenerateInput, context: RequestContext | None = None
    ) -> AsyncGenerator[GenerateEvent, None]:
        """Sources first (when grounded), then text deltas, then one final event.

        Every generated token is counted in exactly one delta: tokens that produced no text (the
        end-of-sequence token, a stop sequence) travel in a delta of their own with empty text, so the
        deltas' token counts add up to the final usage.completion_tokens.
        """
        context = context or RequestContext(uuid.uuid4().hex)
        messages = self._validate.messages(request)
        sampling = self._validate.sampling(request)
        retrieval = self._validate.retrieval(request.retrieval) if request.retrieval is not None else None
        answer = _Answer(context.request_id, self._generator_name(request.model))
        if self.cache.enabled(CacheKind.GENERATION) and entries.is_deterministic(sampling):
            events = self._generate_through_cache(answer, context, messages, sampling, retrieval)
        else:
            events = self._generate(answer, context, messages, sampling, retrieval)
        async with aclosing(events):
            async for event in events:
                yield event

    async def _generate_through_cache(
        self,
        answer: _Answer,
        context: RequestContext,
        messages: list[ChatMessage],
        sampling: SamplingOptions,
        retrieval: RetrievalOptions | None,
    ) -> AsyncGenerator[GenerateEvent, None]:
        """Replays a cached answer, or generates one and caches it once it finished (not if cancelled)."""
        # A routed request is keyed by the route (its policy included), since the router's choice is as
        # deterministic as the answer given the same request and index.
        subject = answer.model or (self.router.fingerprint if self.router else "")

        def cache_key(index_version: int | None) -> str:
            index = None if index_version is None else self._index_state(index_version)
            return entries.generation_key(subject, messages, sampling, retrieval, index)

        version = await self.engines.vector_store.current_version() if retrieval else None
        with self._span("cache.lookup", {"rag.cache": CacheKind.GENERATION.value}) as span:
            cached = await self.cache.get(CacheKind.GENERATION, cache_key(version))
            if span is not None:
                span.set_attribute("rag.cache.hit", cached is not None)
        if cached is not None:
            for event in _replay(entries.decode_answer(cached), answer):
                yield event
            return
        sources: SourcesEvent | None = None
        deltas: list[DeltaEvent] = []
        async with aclosing(self._generate(answer, context, messages, sampling, retrieval)) as events:
            async for event in events:
                if isinstance(event, SourcesEvent):
                    sources = event
                elif isinstance(event, DeltaEvent):
                    deltas.append(event)
                elif event.finish_reason is not FinishReason.CANCELLED:
                    # Stored before the final event goes out: a caller may stop reading right after it.
                    stored = CachedAnswer(
                        sources,
                        deltas,
                        event.finish_reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.model,
                        event.route,
                    )
                    key = cache_key(sources.index_version if sources else None)
                    await self.cache.set(CacheKind.GENERATION, key, entries.encode_answer(stored))
                yield event

    async def _generate(
        self,
        answer: _Answer,
        context: RequestContext,
        messages: list[ChatMessage],
        sampling: SamplingOptions,
        retrieval: RetrievalOptions | None,
    ) -> AsyncGenerator[GenerateEvent, None]:
        # The slot is taken before any work, so a refused call (queue full, quota, draining) is refused
        # before it sent anything, and given back the moment the engine stream ends, however that
        # happens: finished, failed, caller gone, or the stall timeout closing this generator.
        async with self.admission.slot(context.caller):
            query = retrieval_query(messages)
            grounding: Grounding | None = None
            if retrieval is not None:
                result = await self._search(query, retrieval)
                answer.retrieval_ms = _ms_since(answer.started)
                yield SourcesEvent(hits=result.hits, index_version=result.index_version)
                grounding = self._grounding(query, result.hits)
                if not grounding.answerable:
                    for event in self._abstain(answer, grounding):
                        yield event
                    return
            if not answer.model:
                self._route(answer, query, grounding.hits if grounding is not None else None)
            generator = self.engines.generators[answer.model]
            if grounding is not None:
                with self._span("prompt.build", {"rag.prompt.documents": len(grounding.hits)}):
                    messages = grounded_messages(
                        messages,
                        grounding.hits,
                        generator.control_tokens,
                        self.settings.limits.max_grounding_chars,
                    )
            engine_request = GenerationRequest(
                request_id=context.request_id, messages=messages, sampling=sampling, deadline=context.deadline
            )
            async with aclosing(self._deltas(answer, generator.generate(engine_request))) as events:
                async for event in events:
                    yield event

    def _generation_span(self, model: str) -> Span | None:
        """The span of the engine's work on one answer. Not made current: it stays open across the yields
        of _deltas, which ends it."""
        if self._tracer is None:
            return None
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
        }
        return self._tracer.start_span("generate", attributes=attributes)

    async def _deltas(
        self, answer: _Answer, chunks: AsyncIterator[GenerationChunk]
    ) -> AsyncGenerator[GenerateEvent, None]:
        """The engine's chunks as text deltas and a final event, with the generation metrics and span (an
        event at the first token; usage and finish reason at the end)."""
        model = answer.model
        span = self._generation_span(model)
        unsent_tokens = 0
        last_delta_at = 0.0
        finish = "abort"  # what is recorded if the caller goes away (GeneratorExit/CancelledError) first
        try:
            async with aclosing(chunks):  # type: ignore[type-var]
                async for chunk in chunks:
                    answer.completion_tokens += chunk.token_count
                    unsent_tokens += chunk.token_count
                    if chunk.text:
                        now = time.perf_counter()
                        if not answer.time_to_first_token_ms:
                            answer.time_to_first_token_ms = (now - answer.started) * 1000.0
                            self.metrics.time_to_first_token.labels(model).observe(now - answer.started)
                            if span is not None:
                                span.add_event("first_token")
                        else:
                            self.metrics.inter_token_latency.labels(model).observe(now - last_delta_at)
                        last_delta_at = now
                    if chunk.text or (chunk.finish_reason is not None and unsent_tokens):
                        yield DeltaEvent(text=chunk.text, token_count=unsent_tokens)
                        unsent_tokens = 0
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason.value
                        answer.prompt_tokens = chunk.prompt_tokens
                        self.metrics.prompt_tokens.labels(model).inc(chunk.prompt_tokens)
                        yield answer.final(chunk.finish_reason)
                        return
            # An engine that ends without a finish reason was shut down under us.
            finish = FinishReason.CANCELLED.value
            if unsent_tokens:
                yield DeltaEvent(text="", token_count=unsent_tokens)
            yield answer.final(FinishReason.CANCELLED)
        except Exception:
            finish = "error"
            raise
        finally:
            self.metrics.finished.labels(model, finish).inc()
            self.metrics.generation_tokens.labels(model).inc(answer.completion_tokens)
            self.metrics.request_generation_tokens.labels(model).observe(answer.completion_tokens)
            if span is not None:
                _end_generation_span(span, answer, finish)


def _router(settings: Settings, engines: Engines) -> Router | None:
    """The routing policy of the settings, its generators checked against the ones that run."""
    routing = settings.routing
    if routing.route_small_model is None or routing.route_big_model is None:
        return None
    for name in (routing.route_small_model, routing.route_big_model):
        if name not in engines.generators:
            raise ValueError(
                f"routing: no generator named {name!r}; the generators are {sorted(engines.generators)}"
            )
    return Router(routing.route_small_model, routing.route_big_model, routing.route_threshold)


def _end_generation_span(span: Span, answer: _Answer, finish: str) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": answer.model,
            "gen_ai.response.finish_reasons": (finish,),
            "gen_ai.usage.input_tokens": answer.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.completion_tokens,
        }
    )
    if finish == "error":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, "the generator failed"))
    span.end()
