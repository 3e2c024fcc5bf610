"""Vector store on FAISS: exact inner-product search over unit vectors (cosine), with string ids,
metadata and exact-match metadata filters.

One worker thread owns the index and the document maps. GPU indexes are not thread-safe even
for search, and CPU indexes need mutual exclusion for writes, so a single owner thread gives
both without locks and keeps the event loop free.

On a GPU the CPU index stays the master copy: FAISS GPU indexes cannot remove ids and ignore
ID selectors, so deletes go to the master and mark the GPU replica stale (it is re-cloned before
the next search), and filtered searches over-fetch on the GPU and filter afterwards. Snapshots
read the master too (`export_state`): GPU indexes can be neither read back nor serialized.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

import faiss
import numpy as np

from rag_grpc.domain import Document, EngineInfo, FloatMatrix, Hit, SearchQuery, SearchResult, StoreState
from rag_grpc.errors import InvalidArgument, NotFound

T = TypeVar("T")

# How many candidates a filtered GPU search fetches per hit wanted, before filtering on the host.
_GPU_FILTER_OVERFETCH = 8


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissVectorStore:
    def __init__(self, dimension: int, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if gpu_available() else "cpu"
        if device == "cuda" and not gpu_available():
            raise ValueError("vector_store_device=cuda but faiss reports no GPU (install faiss-gpu)")
        self._dimension = dimension
        self._device = device
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss")
        self._master = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self._gpu_resources: Any = None
        self._replica: Any = None
        self._replica_stale = False
        self._documents: dict[int, Document] = {}
        self._internal_ids: dict[str, int] = {}
        self._postings: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._next_internal_id = 0
        self._version = 0

    async def __aenter__(self) -> Self:
        if self._device == "cuda":
            await self._run(self._start_gpu)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def check_health(self) -> None:
        """Always healthy once started: the index lives in this process and has no worker of its own to lose."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="faiss", model="IndexIDMap2(IndexFlatIP)", device=self._device)

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def size(self) -> int:
        return len(self._documents)

    @property
    def version(self) -> int:
        return self._version

    async def current_version(self) -> int:
        return self._version

    async def upsert(self, documents: Sequence[Document], vectors: FloatMatrix) -> int:
        if vectors.shape != (len(documents), self._dimension):
            raise InvalidArgument(
                "vectors", f"expected shape ({len(documents)}, {self._dimension}), got {vectors.shape}"
            )
        return await self._run(self._upsert, list(documents), np.ascontiguousarray(vectors, dtype=np.float32))

    async def delete(self, ids: Sequence[str]) -> int:
        return await self._run(self._delete, list(ids))

    async def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        for query in queries:
            if query.vector.shape != (self._dimension,):
                raise InvalidArgument(
                    "vector", f"expected {self._dimension} values, got {query.vector.shape[0]}"
                )
        return await self._run(self._search, list(queries))

    async def get(self, ids: Sequence[str]) -> Mapping[str, Document]:
        return await self._run(self._get, list(ids))

    async def export_state(self) -> StoreState:
        return await self._run(self._export)

    async def restore_state(self, state: StoreState) -> None:
        if state.vectors.shape != (len(state.documents), self._dimension):
            raise ValueError(
                f"stored vectors have shape {state.vectors.shape}, this index needs ({len(state.documents)}, {self._dimension})"
            )
        await self._run(self._restore, state)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # --- everything below runs on the owner thread

    def _start_gpu(self) -> None:
        self._gpu_resources = faiss.StandardGpuResources()
        self._replica = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._master)

    def _upsert(self, documents: list[Document], vectors: FloatMatrix) -> int:
        replaced = [self._internal_ids[d.id] for d in documents if d.id in self._internal_ids]
        if replaced:
            self._remove_internal(replaced)
        new_ids = np.arange(self._next_internal_id, self._next_internal_id + len(documents), dtype=np.int64)
        self._next_internal_id += len(documents)
        self._master.add_with_ids(vectors, new_ids)
        if self._replica is not None and not self._replica_stale:
            self._replica.add_with_ids(vectors, new_ids)
        for internal_id, document in zip(new_ids.tolist(), documents, strict=True):
            self._documents[internal_id] = document
            self._internal_ids[document.id] = internal_id
            for pair in document.metadata.items():
                self._postings[pair].add(internal_id)
        self._version += 1
        return self._version

    def _delete(self, ids: list[str]) -> int:
        missing = [i for i in ids if i not in self._internal_ids]
        if missing:
            raise NotFound.unknown_ids(missing)
        self._remove_internal([self._internal_ids[i] for i in ids])
        self._version += 1
        return self._version

    def _remove_internal(self, internal_ids: list[int]) -> None:
        # The selector faiss's wrapper would build from a plain id array; its stubs accept only a selector.
        self._master.remove_ids(faiss.IDSelectorBatch(np.asarray(internal_ids, dtype=np.int64)))
        self._replica_stale = self._replica is not None
        for internal_id in internal_ids:
            document = self._documents.pop(internal_id)
            del self._internal_ids[document.id]
            for pair in document.metadata.items():
                posting = self._postings[pair]
                posting.discard(internal_id)
                if not posting:
                    del self._postings[pair]

    def _export(self) -> StoreState:
        # The CPU master always holds every vector (GPU indexes cannot be read back or serialized).
        internal_ids = faiss.vector_to_array(self._master.id_map)
        count = self._master.ntotal
        vectors = (
            self._master.index.reconstruct_n(0, count)
            if count
            else np.empty((0, self._dimension), np.float32)
        )
        documents = [self._documents[i] for i in internal_ids.tolist()]
        return StoreState(documents=documents, vectors=vectors, version=self._version)

    def _restore(self, state: StoreState) -> None:
        self._master.reset()
        self._documents.clear()
        self._internal_ids.clear()
        self._postings.clear()
        self._next_internal_id = 0
        self._replica_stale = self._replica is not None  # re-cloned from the master before the next search
        if state.documents:
            self._upsert(list(state.documents), np.ascontiguousarray(state.vectors, dtype=np.float32))
        self._version = state.version

    def _get(self, ids: list[str]) -> dict[str, Document]:
        return {i: self._documents[self._internal_ids[i]] for i in ids if i in self._internal_ids}

    def _search(self, queries: list[SearchQuery]) -> list[SearchResult]:
        if self._replica_stale:
            self._replica = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._master)
            self._replica_stale = False
        results: list[SearchResult | None] = [None] * len(queries)
        unfiltered = [i for i, q in enumerate(queries) if not q.filter]
        if unfiltered:
            # One call for all unfiltered queries: FAISS is several times faster on a batch.
            k = max(queries[i].top_k for i in unfiltered)
            matrix = np.stack([queries[i].vector for i in unfiltered]).astype(np.float32, copy=False)
            scores, ids = self._index_for_search().search(matrix, min(k, max(self.size, 1)))
            for row, i in enumerate(unfiltered):
                results[i] = self._to_result(queries[i], scores[row], ids[row])
        for i, query in enumerate(queries):
            if query.filter:
                results[i] = self._search_filtered(query)
        return [r for r in results if r is not None]

    def _index_for_search(self) -> Any:
        return self._replica if self._replica is not None else self._master

    def _search_filtered(self, query: SearchQuery) -> SearchResult:
        candidates: set[int] | None = None
        for pair in query.filter.items():
            posting = self._postings.get(pair, set())
            candidates = posting.copy() if candidates is None else candidates & posting
            if not candidates:
                return SearchResult(hits=[], index_version=self._version)
        assert candidates is not None
        vector = query.vector.reshape(1, -1).astype(np.float32, copy=False)
        if self._replica is None:
            selector = faiss.IDSelectorBatch(np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
            # faiss's Python wrapper adds the keyword constructor, which also keeps `selector` referenced
            # from the params; its stubs declare only the bare C++ one.
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            scores, ids = self._master.search(vector, min(query.top_k, len(candidates)), params=params)
        else:
            k = min(self.size, query.top_k * _GPU_FILTER_OVERFETCH, 2048)
            scores, ids = self._replica.search(vector, k)
            keep = np.isin(ids[0], np.fromiter(candidates, dtype=np.int64))
            scores, ids = scores[:, keep], ids[:, keep]
        return self._to_result(query, scores[0], ids[0])

    def _to_result(self, query: SearchQuery, scores: np.ndarray, ids: np.ndarray) -> SearchResult:
        hits: list[Hit] = []
        for score, internal_id in zip(scores.tolist(), ids.tolist(), strict=True):
            if internal_id < 0 or len(hits) == query.top_k:
                break
            if query.min_score is not None and score < query.min_score:
                break  # scores are sorted, nothing later can pass
            document = self._documents[internal_id]
            hits.append(
                Hit(id=document.id, score=float(score), text=document.text, metadata=dict(document.metadata))
            )
        return SearchResult(hits=hits, index_version=self._version)
