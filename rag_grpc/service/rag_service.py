"""RagService: what the API does, independent of gRPC. Servicers convert protobuf to these calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from rag_grpc.domain import (
    DeltaEvent,
    Document,
    EmbedResult,
    FinalEvent,
    FinishReason,
    GenerateEvent,
    GenerateInput,
    GenerationRequest,
    RetrieveInput,
    SearchQuery,
    SearchResult,
    SourcesEvent,
    WriteResult,
)
from rag_grpc.engines import Engines, Generator
from rag_grpc.errors import NotFound
from rag_grpc.service.prompt import grounded_messages, retrieval_query
from rag_grpc.service.validation import Validator
from rag_grpc.settings import Settings


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class RagService:
    def __init__(self, engines: Engines, settings: Settings) -> None:
        self.engines = engines
        self.settings = settings
        self._validate = Validator(settings)

    # --- embeddings and retrieval

    async def embed(self, texts: Sequence[str]) -> EmbedResult:
        texts = self._validate.texts("texts", texts)
        embedder = self.engines.embedder
        batch = await embedder.embed(texts)
        return EmbedResult(batch=batch, model=embedder.info.model, dimension=embedder.dimension)

    async def retrieve(self, request: RetrieveInput) -> SearchResult:
        store = self.engines.vector_store
        text, query, top_k = self._validate.retrieve(request, store.dimension)
        if query is None:
            assert text is not None
            vector = (await self.engines.embedder.embed([text])).vectors[0]
            query = SearchQuery(vector=vector, top_k=top_k, filter=dict(request.filter), min_score=request.min_score)
        (result,) = await store.search([query])
        return result

    # --- documents

    async def upsert(self, documents: Sequence[Document], field: str = "documents") -> WriteResult:
        documents = self._validate.documents(field, documents)
        batch = await self.engines.embedder.embed([d.text for d in documents])
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

    # --- generation

    def generator_for(self, model: str) -> Generator:
        generators = self.engines.generators
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
        ttft_ms = 0.0
        completion_tokens = 0
        async with aclosing(generator.generate(engine_request)) as chunks:
            async for chunk in chunks:
                completion_tokens += chunk.token_count
                if chunk.text:
                    if not ttft_ms:
                        ttft_ms = _ms_since(started)
                    yield DeltaEvent(text=chunk.text, token_count=chunk.token_count)
                if chunk.finish_reason is not None:
                    yield FinalEvent(
                        finish_reason=chunk.finish_reason,
                        prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=completion_tokens,
                        retrieval_ms=retrieval_ms,
                        time_to_first_token_ms=ttft_ms,
                        total_ms=_ms_since(started),
                        request_id=request_id,
                        model=generator.info.model,
                    )
                    return
        # An engine that ends without a finish reason was shut down under us.
        yield FinalEvent(FinishReason.CANCELLED, 0, completion_tokens, retrieval_ms, ttft_ms, _ms_since(started), request_id, generator.info.model)
