"""Vector store on Milvus (pymilvus MilvusClient): an index that several replicas share.

One collection per index holds each document's id, text, metadata and vector. The same code talks to
Milvus Standalone or Distributed (`uri` of a server) and to embedded milvus-lite (`uri` a local file).
Durability is Milvus's: no write-ahead log or snapshots here.

No text from a request ever becomes part of a filter expression. The primary key is the SHA-256 of the
document id (pymilvus splices VARCHAR primary keys into `pk in ['...']` unquoted), and metadata filters
match `tags`, an array holding the SHA-256 of each (key, value) pair: a filter expression contains only
the field name and hex digests, whatever the keys and values are.

Scores are inner products (metric IP) of unit vectors, i.e. cosine similarity, as FAISS's. The version
comes from an IndexVersion (Redis when replicas share the collection), read before each search and
raised after each write, so a cached result is never older than a write another replica acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from rag_grpc.domain import Document, EngineInfo, FloatMatrix, Hit, SearchQuery, SearchResult
from rag_grpc.engines.index_version import IndexVersion, LocalIndexVersion
from rag_grpc.errors import InvalidArgument, NotFound, Unavailable

T = TypeVar("T")

_FIELDS = ["doc_id", "text", "metadata"]
# Milvus's limits: VARCHAR up to 65,535 bytes, arrays up to 4,096 elements.
_MAX_VARCHAR = 65_535
_MAX_TAGS = 4_096
_DIGEST_CHARS = 64


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def primary_key(document_id: str) -> str:
    return _digest(document_id)


def tag(key: str, value: str) -> str:
    """The digest of one metadata pair; JSON keeps ("a=b", "c") and ("a", "b=c") apart."""
    return _digest(json.dumps([key, value], ensure_ascii=False))


def filter_expression(filter_: Mapping[str, str]) -> str:
    """Documents carrying every pair of `filter_`. Only hex digests are spliced into the expression."""
    return "array_contains_all(tags, [{}])".format(", ".join(f'"{tag(k, v)}"' for k, v in filter_.items()))


class MilvusVectorStore:
    def __init__(
        self,
        dimension: int,
        uri: str,
        collection: str,
        *,
        token: str = "",
        version: IndexVersion | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._dimension = dimension
        self._uri = uri
        self._collection = collection
        self._token = token
        self._timeout_s = timeout_s
        self._shared_version = version or LocalIndexVersion()
        # Searches run concurrently with each other; this process's writes go one at a time.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="milvus")
        self._write_lock = asyncio.Lock()
        self._client: MilvusClient | None = None
        self._version = 0
        self._size = 0

    async def __aenter__(self) -> Self:
        self._client = await self._run(
            MilvusClient,
            uri=self._uri,
            token=self._token,
            timeout=self._timeout_s,
            # pymilvus pings every 10 s; a server with gRPC's default ping policy (at most one ping per
            # 5 min without data, as milvus-lite's) answers GOAWAY "too many pings" during a long insert or
            # while idle, and the call fails. Pings at 5.5 min suit both it and Milvus proper.
            grpc_options={"grpc.keepalive_time_ms": 330_000, "grpc.keepalive_permit_without_calls": False},
        )
        await self._run(self._ensure_collection)
        await self._refresh()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=True, cancel_futures=True)
        await self._shared_version.aclose()

    async def check_health(self) -> None:
        """Unavailable while Milvus or the shared version cannot answer; refreshes `size` and `version`."""
        await self._refresh()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="milvus", model=f"{self._collection} (IP, AUTOINDEX)", device="remote")

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def size(self) -> int:
        """The count at this replica's last write or health check (other replicas write too)."""
        return self._size

    @property
    def version(self) -> int:
        """The version this replica last saw; `current_version()` reads the shared one."""
        return self._version

    async def current_version(self) -> int:
        self._version = max(self._version, await self._shared_version.read())
        return self._version

    async def upsert(self, documents: Sequence[Document], vectors: FloatMatrix) -> int:
        if vectors.shape != (len(documents), self._dimension):
            raise InvalidArgument(
                "vectors", f"expected shape ({len(documents)}, {self._dimension}), got {vectors.shape}"
            )
        rows = [self._row(d, v) for d, v in zip(documents, np.asarray(vectors, np.float32), strict=True)]
        async with self._write_lock:
            if rows:
                await self._run(self._milvus().upsert, self._collection, rows)
            return await self._written()

    async def delete(self, ids: Sequence[str]) -> int:
        keys = [primary_key(i) for i in ids]
        async with self._write_lock:
            found = await self._run(self._milvus().get, self._collection, ids=keys, output_fields=["pk"])
            present = {row["pk"] for row in found}
            missing = [i for i, k in zip(ids, keys, strict=True) if k not in present]
            if missing:
                raise NotFound.unknown_ids(missing)
            if keys:
                await self._run(self._milvus().delete, self._collection, ids=keys)
            return await self._written()

    async def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        for query in queries:
            if query.vector.shape != (self._dimension,):
                raise InvalidArgument(
                    "vector", f"expected {self._dimension} values, got {query.vector.shape[0]}"
                )
        # Read before searching: a result is stored in the cache under a version no newer than its data.
        version = await self.current_version()
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(tuple(sorted(query.filter.items())), []).append(i)
        results: list[SearchResult | None] = [None] * len(queries)
        # One call per distinct filter: Milvus answers a batch of vectors in about the time of one.
        searches = [self._search_group([queries[i] for i in rows], version) for rows in groups.values()]
        for rows, group_results in zip(groups.values(), await asyncio.gather(*searches), strict=True):
            for i, result in zip(rows, group_results, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def get(self, ids: Sequence[str]) -> Mapping[str, Document]:
        rows = await self._run(
            self._milvus().get, self._collection, ids=[primary_key(i) for i in ids], output_fields=_FIELDS
        )
        wanted = set(ids)
        documents = (self._document(row) for row in rows)
        return {d.id: d for d in documents if d.id in wanted}

    # --- helpers

    async def _search_group(self, queries: list[SearchQuery], version: int) -> list[SearchResult]:
        filter_ = queries[0].filter
        reply = await self._run(
            self._milvus().search,
            self._collection,
            data=[q.vector.astype(np.float32).tolist() for q in queries],
            limit=max(q.top_k for q in queries),
            filter=filter_expression(filter_) if filter_ else "",
            output_fields=_FIELDS,
            search_params={"metric_type": "IP"},
        )
        return [self._result(q, hits, version) for q, hits in zip(queries, reply, strict=True)]

    def _result(self, query: SearchQuery, hits: Sequence[Mapping[str, Any]], version: int) -> SearchResult:
        found: list[Hit] = []
        for hit in hits[: query.top_k]:
            score = float(hit["distance"])
            if query.min_score is not None and score < query.min_score:
                break  # best first: nothing later can pass
            document = self._document(hit["entity"])
            found.append(
                Hit(id=document.id, score=score, text=document.text, metadata=dict(document.metadata))
            )
        return SearchResult(hits=found, index_version=version)

    @staticmethod
    def _document(row: Mapping[str, Any]) -> Document:
        return Document(row["doc_id"], row["text"], dict(row["metadata"] or {}))

    @staticmethod
    def _row(document: Document, vector: np.ndarray) -> dict[str, object]:
        return {
            "pk": primary_key(document.id),
            "doc_id": document.id,
            "text": document.text,
            "metadata": dict(document.metadata),
            "tags": [tag(k, v) for k, v in document.metadata.items()],
            "vector": vector.tolist(),
        }

    async def _written(self) -> int:
        """After a write was applied: raise the shared version (before the caller is answered)."""
        self._version = max(self._version, await self._shared_version.bump())
        self._size = await self._run(self._count)
        return self._version

    async def _refresh(self) -> None:
        self._size = await self._run(self._count)
        await self.current_version()

    def _milvus(self) -> MilvusClient:
        if self._client is None:
            raise Unavailable("the Milvus vector store is not started")
        return self._client

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except MilvusException as exc:
            raise Unavailable(f"Milvus ({self._collection}): {exc}") from exc

    # --- run on the worker threads

    def _count(self) -> int:
        rows = self._milvus().query(self._collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _ensure_collection(self) -> None:
        client = self._milvus()
        if not client.has_collection(self._collection):
            try:
                self._create_collection(client)
            except MilvusException:
                # Another replica created it meanwhile; the check below tells whether it is usable.
                if not client.has_collection(self._collection):
                    raise
        fields = client.describe_collection(self._collection)["fields"]
        vector = next((f for f in fields if f["name"] == "vector"), None)
        dimension = None if vector is None else int(vector["params"]["dim"])
        if dimension != self._dimension:
            raise ValueError(
                f"Milvus collection {self._collection!r} has vectors of dimension {dimension}, "
                f"the embedder makes {self._dimension}: use another milvus_collection"
            )
        client.load_collection(self._collection)

    def _create_collection(self, client: MilvusClient) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=_DIGEST_CHARS)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=_MAX_VARCHAR)
        schema.add_field("text", DataType.VARCHAR, max_length=_MAX_VARCHAR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(
            "tags",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=_MAX_TAGS,
            max_length=_DIGEST_CHARS,
        )
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dimension)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="IP")
        # Strong: a search sees every write acknowledged before it, on any replica.
        client.create_collection(
            self._collection, schema=schema, index_params=index, consistency_level="Strong"
        )
