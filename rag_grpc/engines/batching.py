"""Engine wrappers that coalesce concurrent single calls into batches (see micro_batcher.py).

They implement the same protocols as the engines they wrap, so the service does not know they
exist. They do not own the wrapped engine: whoever entered it leaves it, after the wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from rag_grpc.domain import Document, EmbeddingBatch, EngineInfo, FloatMatrix, SearchQuery, SearchResult
from rag_grpc.engines.base import Embedder, VectorStore
from rag_grpc.engines.micro_batcher import BatcherStats, MicroBatcher
from rag_grpc.errors import Unavailable

_EmbeddedText = tuple[np.ndarray, int]


class _BatchingWrapper:
    """What both wrappers share: the wrapped engine, the batcher's lifecycle and stats, pass-through."""

    def __init__(self, inner: Embedder | VectorStore, batcher: MicroBatcher[Any, Any]) -> None:
        self.inner = inner
        self._batcher = batcher

    def __getattr__(self, name: str) -> object:
        # Members beyond the protocol (persistence, say) pass through to the wrapped engine.
        if name == "inner":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def stats(self) -> BatcherStats:
        return self._batcher.stats

    async def __aenter__(self) -> Self:
        self._batcher.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._batcher.stop()

    async def check_health(self) -> None:
        if not self._batcher.working:
            raise Unavailable(f"the {self.info.backend} batcher is not running")
        await self.inner.check_health()

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    @property
    def dimension(self) -> int:
        return self.inner.dimension


class BatchingEmbedder(_BatchingWrapper):
    """Texts of concurrent embed() calls go to the model together, at most `max_batch_size` per call."""

    inner: Embedder

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_texts: int,
        stats: BatcherStats | None = None,
    ) -> None:
        batcher: MicroBatcher[str, _EmbeddedText] = MicroBatcher(
            "embedder",
            self._embed_batch,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queued_items=max_queued_texts,
            stats=stats,
        )
        super().__init__(inner, batcher)

    @property
    def queued_texts(self) -> int:
        return self._batcher.queued_items

    @property
    def max_input_tokens(self) -> int:
        return self.inner.max_input_tokens

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        rows = await self._batcher.submit(texts)
        return EmbeddingBatch(
            vectors=np.stack([vector for vector, _ in rows]), token_counts=[n for _, n in rows]
        )

    async def _embed_batch(self, texts: list[str]) -> list[_EmbeddedText]:
        # The model sorts a batch by length itself (sentence-transformers does), so no reordering here.
        batch = await self.inner.embed(texts)
        return list(zip(batch.vectors, batch.token_counts, strict=True))


class BatchingVectorStore(_BatchingWrapper):
    """Queries of concurrent search() calls reach the index in one call; everything else passes through."""

    inner: VectorStore

    def __init__(
        self,
        inner: VectorStore,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_queries: int,
        stats: BatcherStats | None = None,
    ) -> None:
        batcher: MicroBatcher[SearchQuery, SearchResult] = MicroBatcher(
            "vector store",
            inner.search,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queued_items=max_queued_queries,
            stats=stats,
        )
        super().__init__(inner, batcher)

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def version(self) -> int:
        return self.inner.version

    async def current_version(self) -> int:
        return await self.inner.current_version()

    async def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        return list(await self._batcher.submit(queries))

    async def upsert(self, documents: Sequence[Document], vectors: FloatMatrix) -> int:
        return await self.inner.upsert(documents, vectors)

    async def delete(self, ids: Sequence[str]) -> int:
        return await self.inner.delete(ids)

    async def get(self, ids: Sequence[str]) -> Mapping[str, Document]:
        return await self.inner.get(ids)
