"""The three engine interfaces. Servicers and the RAG service see only these.

Every engine is an async context manager: entering loads models and starts workers, leaving
releases them. No method may block the event loop; blocking model, tokenizer and index calls
run on the engine's own worker threads. Every engine reports its health with `check_health()`,
which raises Unavailable while the engine cannot do its work (a dead worker thread or engine
process); the server's health service follows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol, Self, runtime_checkable

from rag_grpc.domain import (
    Document,
    EmbeddingBatch,
    EngineInfo,
    FloatMatrix,
    GenerationChunk,
    GenerationRequest,
    SearchQuery,
    SearchResult,
    SnapshotInfo,
    StoreState,
)


@runtime_checkable
class Embedder(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    async def check_health(self) -> None:
        """Returns when the engine can work; raises Unavailable (saying why) when it cannot."""
        ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_input_tokens(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        """Unit-length vectors for `texts`, in order. Cancelling the caller drops its work where possible."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class VectorStore(Protocol):
    """Documents with their vectors, searchable by inner product (cosine on unit vectors)."""

    @property
    def info(self) -> EngineInfo: ...

    async def check_health(self) -> None:
        """Returns when the engine can work; raises Unavailable (saying why) when it cannot."""
        ...

    @property
    def dimension(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def version(self) -> int:
        """Increases with every write, so caches keyed by it never serve stale results."""
        ...

    async def current_version(self) -> int:
        """The version now, counting every write acknowledged before the call, also by other replicas
        sharing the index: what a cache lookup must be keyed by. An in-process index returns `version`."""
        ...

    async def upsert(self, documents: Sequence[Document], vectors: FloatMatrix) -> int:
        """Adds or replaces documents atomically; returns the new version."""
        ...

    async def delete(self, ids: Sequence[str]) -> int:
        """Removes documents atomically; raises NotFound, changing nothing, if any id is unknown."""
        ...

    async def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        """One result per query, best hits first."""
        ...

    async def get(self, ids: Sequence[str]) -> Mapping[str, Document]:
        """The stored documents among `ids`."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class PersistableVectorStore(VectorStore, Protocol):
    """A store whose contents can be copied out and put back: what durability (rag_grpc.storage) wraps.

    Every successful upsert or delete raises `version` by exactly one, so a write-ahead log can name
    the version each write produces before the write is applied.
    """

    async def export_state(self) -> StoreState:
        """A consistent copy of every document and vector, and the version they are at."""
        ...

    async def restore_state(self, state: StoreState) -> None:
        """Replaces everything the store holds with `state`, version included."""
        ...


@runtime_checkable
class Snapshotter(Protocol):
    """A store that can persist itself on request (see rag_grpc.storage.DurableVectorStore)."""

    async def snapshot(self) -> SnapshotInfo:
        """Writes a snapshot of the current version and drops the log it covers."""
        ...


@runtime_checkable
class Generator(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    async def check_health(self) -> None:
        """Returns when the engine can work; raises Unavailable (saying why) when it cannot."""
        ...

    @property
    def control_tokens(self) -> Sequence[str]:
        """Strings the chat template treats as structure; retrieved text must not contain them."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Streams chunks as they are decoded; the last one carries the finish reason.

        Closing the iterator early or cancelling the task that consumes it aborts the engine request
        within one decode step.
        """
        ...

    def num_running_requests(self) -> int:
        """Requests the engine is still working on (including ones being torn down)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
