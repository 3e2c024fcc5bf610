"""What only the Milvus backend has: recall against FAISS flat, expressions built from digests only, and a
version shared through Redis by stores (replicas) on one collection."""

from __future__ import annotations

import re
import time
import uuid

import numpy as np

from rag_grpc.domain import Document, SearchQuery
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.engines.index_version import RedisIndexVersion
from rag_grpc.engines.milvus_store import MilvusVectorStore, filter_expression
from tests.engines.test_vector_store import HOSTILE


def _clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around a few hundred centres, as embeddings of a real corpus are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + 0.5 * rng.standard_normal((rows, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_recall_at_10_against_faiss_flat(milvus_uri: str) -> None:
    vectors = _clustered(3000, 384, seed=0)
    queries = _clustered(100, 384, seed=1)
    documents = [Document(f"d{i}", f"text {i}") for i in range(len(vectors))]
    search = [SearchQuery(vector=q, top_k=10) for q in queries]
    async with (
        FaissVectorStore(384, "cpu") as exact,
        MilvusVectorStore(384, milvus_uri, f"recall_{uuid.uuid4().hex}") as milvus,
    ):
        for start in range(0, len(documents), 1000):
            chunk = slice(start, start + 1000)
            await exact.upsert(documents[chunk], vectors[chunk])
            await milvus.upsert(documents[chunk], vectors[chunk])
        expected = await exact.search(search)
        started = time.perf_counter()
        found = await milvus.search(search)
        elapsed = time.perf_counter() - started
    overlap = sum(
        len({h.id for h in e.hits} & {h.id for h in f.hits}) for e, f in zip(expected, found, strict=True)
    )
    recall = overlap / (10 * len(queries))
    print(
        f"milvus-lite recall@10 {recall:.4f} over {len(queries)} queries, batch search {elapsed * 1000:.0f} ms"
    )
    assert recall >= 0.99
    # Same meaning of scores: cosine similarity of the same pair, whichever backend answers.
    assert np.allclose(
        [h.score for h in found[0].hits[:3]], [h.score for h in expected[0].hits[:3]], atol=1e-4
    )


def test_filter_expressions_carry_only_digests() -> None:
    for text in HOSTILE:
        expression = filter_expression({text: text, "k": text})
        assert re.fullmatch(r'array_contains_all\(tags, \["[0-9a-f]{64}", "[0-9a-f]{64}"\]\)', expression)


async def test_replicas_on_one_collection_share_the_version_through_redis(
    milvus_uri: str, redis_url: str
) -> None:
    collection, key = f"shared_{uuid.uuid4().hex}", f"test:index-version:{uuid.uuid4().hex}"
    vectors = np.eye(4, dtype=np.float32)

    def replica() -> MilvusVectorStore:
        return MilvusVectorStore(4, milvus_uri, collection, version=RedisIndexVersion(redis_url, key))

    async with replica() as a, replica() as b:
        start = await b.current_version()
        written = await a.upsert([Document("x", "one")], vectors[:1])
        # B has not written or searched since: its next read sees A's acknowledged write.
        assert written > start and await b.current_version() == written
        (result,) = await b.search([SearchQuery(vector=vectors[0], top_k=1)])
        assert result.index_version == written and [h.id for h in result.hits] == ["x"]
        deleted = await b.delete(["x"])
        assert deleted == written + 1 and await a.current_version() == deleted
        assert await a.get(["x"]) == {}
