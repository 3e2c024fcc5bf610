"""The batching wrappers around the real embedder and the real FAISS store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from rag_grpc.domain import Document, SearchQuery
from rag_grpc.engines import Engines
from rag_grpc.engines.base import Embedder
from rag_grpc.engines.batching import BatchingEmbedder, BatchingVectorStore
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.errors import InvalidArgument, Unavailable

TEXTS = [
    "The Pharos of Alexandria was a lighthouse.",
    "Espresso is brewed by forcing hot water through finely ground coffee.",
    "Jupiter is the largest planet in the solar system.",
    "A cat sat on the mat.",
    "gRPC streams messages over HTTP/2.",
    "Bread rises because yeast produces carbon dioxide.",
]


@pytest.fixture
def raw_embedder(engines: Engines) -> Embedder:
    """The session's sentence-transformers embedder without its production batcher."""
    embedder = engines.embedder
    assert isinstance(embedder, BatchingEmbedder)
    return embedder.inner


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_concurrent_calls_share_batches_and_equal_unbatched_embeddings(raw_embedder: Embedder) -> None:
    unbatched = [(await raw_embedder.embed([text])).vectors[0] for text in TEXTS]
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=64, max_wait_s=0.2, max_queued_texts=100
    ) as batching:
        results = await asyncio.gather(*(batching.embed([text]) for text in TEXTS))
        assert batching.stats.batches < len(TEXTS), "concurrent calls were not coalesced"
        assert batching.stats.items == len(TEXTS)
    for text, result, reference in zip(TEXTS, results, unbatched, strict=True):
        assert result.vectors.shape == (1, 384)
        np.testing.assert_allclose(result.vectors[0], reference, atol=1e-5, err_msg=text)
        assert result.token_counts == (await raw_embedder.embed([text])).token_counts


async def test_multi_text_calls_keep_their_order_and_large_calls_run_alone(raw_embedder: Embedder) -> None:
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=4, max_wait_s=0.05, max_queued_texts=100
    ) as batching:
        pair, big, single = await asyncio.gather(
            batching.embed(TEXTS[:2]), batching.embed(TEXTS), batching.embed(TEXTS[5:])
        )
    reference = (await raw_embedder.embed(TEXTS)).vectors
    np.testing.assert_allclose(pair.vectors, reference[:2], atol=1e-5)
    np.testing.assert_allclose(big.vectors, reference, atol=1e-5)
    np.testing.assert_allclose(single.vectors, reference[5:], atol=1e-5)


async def test_a_caller_cancelled_while_queued_is_dropped_and_the_others_complete(
    raw_embedder: Embedder,
) -> None:
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=64, max_wait_s=0.3, max_queued_texts=100
    ) as batching:
        tasks = [asyncio.create_task(batching.embed([text])) for text in TEXTS[:3]]
        doomed = asyncio.create_task(batching.embed(["this text is never embedded", "nor this one"]))
        await _until(lambda: batching.queued_texts == 5)
        doomed.cancel()
        results = await asyncio.gather(*tasks)
        assert doomed.cancelled()
        assert batching.stats.dropped_items == 2
        assert batching.stats.items == 3  # the cancelled texts never reached the model
    for text, result in zip(TEXTS, results, strict=False):
        np.testing.assert_allclose(
            result.vectors[0], (await raw_embedder.embed([text])).vectors[0], atol=1e-5
        )


async def test_a_caller_cancelled_during_its_batch_does_not_fail_the_others(raw_embedder: Embedder) -> None:
    # 64 texts take long enough on a CPU that the cancellation lands while the batch is computing.
    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" for i in range(64)]
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=128, max_wait_s=0.2, max_queued_texts=200
    ) as batching:
        doomed = asyncio.create_task(batching.embed(texts[:32]))
        survivor = asyncio.create_task(batching.embed(texts[32:]))
        await _until(lambda: batching.queued_texts == 64)
        await _until(lambda: batching.queued_texts == 0)  # taken by the worker
        doomed.cancel()
        result = await survivor
        assert doomed.cancelled()
        assert batching.stats.batches == 1 and batching.stats.dropped_items == 0
    np.testing.assert_allclose(result.vectors, (await raw_embedder.embed(texts[32:])).vectors, atol=1e-5)


async def test_a_full_queue_answers_at_once(raw_embedder: Embedder) -> None:
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=64, max_wait_s=30, max_queued_texts=4
    ) as batching:
        # Two calls in one tick look like concurrency, so the worker holds them for company (30 s),
        # and the queue stays full while a third call arrives.
        waiting = [
            asyncio.create_task(batching.embed(TEXTS[:2])),
            asyncio.create_task(batching.embed(TEXTS[2:4])),
        ]
        await _until(lambda: batching.queued_texts == 4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable, match="overloaded"):
            await batching.embed(["one more"])
        assert loop.time() - started < 0.1
        assert batching.stats.rejected_calls == 1
    # Leaving the batcher fails what still waits, rather than leaving it hanging.
    for task in waiting:
        with pytest.raises(Unavailable, match="shutting down"):
            await task


async def test_a_lone_call_on_an_idle_batcher_does_not_wait_for_company(raw_embedder: Embedder) -> None:
    async with BatchingEmbedder(
        raw_embedder, max_batch_size=64, max_wait_s=30, max_queued_texts=100
    ) as batching:
        for text in TEXTS[:3]:  # one after another: concurrency 1
            result = await asyncio.wait_for(batching.embed([text]), timeout=10)
            assert result.vectors.shape == (1, 384)
        assert batching.stats.batches == 3


@pytest.fixture
async def store() -> AsyncIterator[FaissVectorStore]:
    async with FaissVectorStore(dimension=8, device="cpu") as faiss_store:
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(200, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        documents = [
            Document(id=f"d{i}", text=f"doc {i}", metadata={"parity": str(i % 2)}) for i in range(200)
        ]
        await faiss_store.upsert(documents, vectors)
        yield faiss_store


def _queries(count: int) -> list[SearchQuery]:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        SearchQuery(vector=v, top_k=1 + i % 7, filter={"parity": "1"} if i % 3 == 0 else {}, min_score=None)
        for i, v in enumerate(vectors)
    ]


async def test_concurrent_searches_share_index_calls_and_equal_single_searches(
    store: FaissVectorStore,
) -> None:
    queries = _queries(40)
    expected = [(await store.search([q]))[0] for q in queries]
    async with BatchingVectorStore(
        store, max_batch_size=64, max_wait_s=0.1, max_queued_queries=100
    ) as batching:
        results = await asyncio.gather(*(batching.search([q]) for q in queries))
        assert batching.stats.batches < len(queries)
    assert [r[0] for r in results] == expected


async def test_a_bad_query_fails_only_its_own_caller(store: FaissVectorStore) -> None:
    good = _queries(3)
    bad = SearchQuery(vector=np.ones(5, dtype=np.float32), top_k=3)
    async with BatchingVectorStore(
        store, max_batch_size=64, max_wait_s=0.1, max_queued_queries=100
    ) as batching:
        outcomes = await asyncio.gather(
            *(batching.search([q]) for q in good), batching.search([bad]), return_exceptions=True
        )
    assert isinstance(outcomes[-1], InvalidArgument)
    assert outcomes[:-1] == [await store.search([q]) for q in good]
