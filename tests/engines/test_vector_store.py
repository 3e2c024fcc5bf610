"""The VectorStore contract, for every backend (FAISS in process, Milvus on a milvus-lite server)."""

from __future__ import annotations

import numpy as np
import pytest

from rag_grpc.domain import Document, SearchQuery
from rag_grpc.errors import InvalidArgument, NotFound
from tests.engines.conftest import StoreFactory


def _unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_search_returns_exact_inner_product_neighbours(make_store: StoreFactory) -> None:
    vectors = _unit(200, 16)
    async with make_store(16) as store:
        await store.upsert(
            [Document(f"d{i}", f"text {i}", {"parity": str(i % 2)}) for i in range(200)], vectors
        )
        queries = [SearchQuery(vector=vectors[i], top_k=3) for i in (5, 17)]
        results = await store.search(queries)
    for query, result in zip(queries, results, strict=True):
        expected = np.argsort(-(vectors @ query.vector))[:3]
        assert [h.id for h in result.hits] == [f"d{i}" for i in expected]
        assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)


async def test_filters_min_score_and_mixed_batches(make_store: StoreFactory) -> None:
    vectors = _unit(50, 8, seed=1)
    async with make_store(8) as store:
        await store.upsert([Document(f"d{i}", "t", {"parity": str(i % 2)}) for i in range(50)], vectors)
        filtered, unfiltered, strict = await store.search(
            [
                SearchQuery(vector=vectors[4], top_k=5, filter={"parity": "1"}),
                SearchQuery(vector=vectors[4], top_k=2),
                SearchQuery(vector=vectors[4], top_k=50, min_score=0.999),
            ]
        )
    assert len(filtered.hits) == 5 and all(int(h.id[1:]) % 2 == 1 for h in filtered.hits)
    assert unfiltered.hits[0].id == "d4" and len(unfiltered.hits) == 2
    assert [h.id for h in strict.hits] == ["d4"]


async def test_upsert_replaces_and_delete_is_all_or_nothing(make_store: StoreFactory) -> None:
    async with make_store(4) as store:
        v1 = await store.upsert([Document("a", "old", {"k": "1"}), Document("b", "keep")], _unit(2, 4))
        v2 = await store.upsert([Document("a", "new", {"k": "2"})], _unit(1, 4, seed=3))
        assert v2 == v1 + 1 and store.size == 2
        assert (await store.get(["a"]))["a"].text == "new"
        (old_tag,) = await store.search([SearchQuery(vector=_unit(1, 4)[0], top_k=5, filter={"k": "1"})])
        assert old_tag.hits == []

        with pytest.raises(NotFound):
            await store.delete(["b", "missing"])
        assert store.size == 2 and store.version == v2

        v3 = await store.delete(["b"])
        assert v3 == v2 + 1 and store.size == 1 and await store.get(["b"]) == {}


async def test_top_k_larger_than_the_index_and_empty_index(make_store: StoreFactory) -> None:
    async with make_store(4) as store:
        (empty,) = await store.search([SearchQuery(vector=_unit(1, 4)[0], top_k=10)])
        assert empty.hits == []
        await store.upsert([Document("only", "x")], _unit(1, 4))
        (one,) = await store.search([SearchQuery(vector=_unit(1, 4)[0], top_k=10)])
        assert [h.id for h in one.hits] == ["only"]


async def test_wrong_dimensions_are_rejected(make_store: StoreFactory) -> None:
    async with make_store(4) as store:
        with pytest.raises(InvalidArgument):
            await store.upsert([Document("a", "x")], _unit(1, 5))
        with pytest.raises(InvalidArgument):
            await store.search([SearchQuery(vector=np.ones(3, dtype=np.float32), top_k=1)])
        assert store.size == 0 and store.version == 0


# Strings that would change a Milvus expression if spliced into one unescaped.
HOSTILE = [
    '"x" or 1 == 1',
    "x' or 1 == 1 or 'y",
    '"]) or true or array_contains_all(tags, ["',
    "\\",
    '\\" or pk != "',
    "",
]


async def test_hostile_filter_keys_and_values_match_only_themselves(make_store: StoreFactory) -> None:
    vectors = _unit(len(HOSTILE) + 1, 8, seed=5)
    documents = [Document(f"h{i}", "t", {text: text, "n": str(i)}) for i, text in enumerate(HOSTILE)]
    documents.append(Document("plain", "t", {"k": "v"}))
    async with make_store(8) as store:
        await store.upsert(documents, vectors)
        for i, text in enumerate(HOSTILE):
            queries = [
                SearchQuery(vector=vectors[0], top_k=10, filter={text: text}),
                SearchQuery(vector=vectors[0], top_k=10, filter={"k": text}),
                SearchQuery(vector=vectors[0], top_k=10, filter={text: "v"}),
            ]
            exact, as_value, as_key = await store.search(queries)
            assert [h.id for h in exact.hits] == [f"h{i}"]
            assert exact.hits[0].metadata == {text: text, "n": str(i)}
            assert as_value.hits == [] and as_key.hits == []


async def test_hostile_ids_are_plain_ids(make_store: StoreFactory) -> None:
    vectors = _unit(2, 4, seed=6)
    async with make_store(4) as store:
        await store.upsert([Document("a", "x"), Document("' or 1 == 1 or '", "y")], vectors)
        with pytest.raises(NotFound):
            await store.delete(["a' or pk != '"])
        assert store.size == 2
        assert set(await store.get(["a", "' or 1 == 1 or '", "' or 1 == 1 or 'x"])) == {
            "a",
            "' or 1 == 1 or '",
        }
        await store.delete(["' or 1 == 1 or '"])
        assert set(await store.get(["a", "' or 1 == 1 or '"])) == {"a"} and store.size == 1
