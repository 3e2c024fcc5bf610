"""Every call of both clients against the session's real server: typed answers, streamed events in order,
ingest progress, and cancelling a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from rag_grpc_client import (
    AsyncClient,
    Client,
    Document,
    Final,
    IngestProgress,
    Retrieval,
    Sources,
    TextDelta,
)


@pytest.fixture
async def client(target: str) -> AsyncClient:
    return AsyncClient(target)


async def test_embed_retrieve_and_documents(client: AsyncClient, isolated_tag: str) -> None:
    async with client:
        embedded = await client.embed(["hello world", "bonjour"])
        assert len(embedded.embeddings) == 2
        assert len(embedded.embeddings[0].values) == embedded.dimension > 0

        docs = [
            Document(f"{isolated_tag}-1", "The okapi lives in the Ituri rainforest.", {"test": isolated_tag}),
            {
                "id": f"{isolated_tag}-2",
                "text": "Basalt is a volcanic rock.",
                "metadata": {"test": isolated_tag},
            },
        ]
        written = await client.upsert(docs)
        assert written.count == 2
        found = await client.retrieve("Where does the okapi live?", top_k=1, filter={"test": isolated_tag})
        assert [hit.id for hit in found.hits] == [f"{isolated_tag}-1"]
        assert found.index_version >= written.index_version
        by_vector = await client.retrieve(embedded.embeddings[0].values, top_k=1)
        assert len(by_vector.hits) == 1

        deleted = await client.delete([f"{isolated_tag}-1", f"{isolated_tag}-2"])
        assert deleted.count == 2 and deleted.index_version > written.index_version


async def test_generate_streams_sources_deltas_then_final(client: AsyncClient, isolated_tag: str) -> None:
    tagged = {"test": isolated_tag}
    docs = [Document(f"{isolated_tag}-{p}", f"{p} has the tallest volcano.", tagged) for p in ("Mars", "Io")]
    async with client:
        await client.upsert(docs)
        retrieval = Retrieval(top_k=2, filter=tagged)
        events = [
            event
            async for event in client.generate(
                "Which planet has the tallest volcano?", retrieval=retrieval, max_tokens=8
            )
        ]
        assert isinstance(events[0], Sources) and len(events[0].hits) == 2
        assert all(isinstance(event, TextDelta) for event in events[1:-1])
        final = events[-1]
        assert isinstance(final, Final)
        assert final.usage.completion_tokens == sum(e.token_count for e in events[1:-1])
        assert final.finish_reason in {"stop", "length"} and final.request_id

        answer = await client.answer("What is the capital of France?", max_tokens=16)
        assert "Paris" in answer.text and answer.sources == []


async def test_leaving_a_stream_cancels_it(client: AsyncClient) -> None:
    async with client:
        async with client.generate("Tell me a long story.", max_tokens=200, temperature=0.7) as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
        # The same client goes on working after the cancelled call.
        assert (await client.info()).version


async def test_ingest_reports_progress_and_info_and_health(client: AsyncClient, isolated_tag: str) -> None:
    seen: list[IngestProgress] = []
    docs = [
        Document(f"{isolated_tag}-{i}", f"Note number {i} about gneiss.", {"test": isolated_tag})
        for i in range(5)
    ]

    async def stream() -> AsyncIterator[Document]:
        for doc in docs:
            yield doc

    async with client:
        result = await client.ingest(stream(), batch_size=2, on_progress=seen.append)
        assert (result.documents, result.batches) == (5, 3)
        assert [p.documents for p in seen] == [2, 4, 5] and seen[-1].bytes > 0
        info = await client.info()
        assert info.index.size >= 5 and info.limits["max_top_k"] > 0
        assert await client.health() == "SERVING"
        assert await client.health("rag_grpc.v1.GenerateService") == "SERVING"
        assert await client.health("no.such.Service") == "SERVICE_UNKNOWN"
        await client.delete([d.id for d in docs])

        async def broken() -> AsyncIterator[Document]:
            yield docs[0]
            raise ValueError("line 2 is not JSON")

        with pytest.raises(ValueError, match="line 2"):
            await client.ingest(broken())
        assert await client.health() == "SERVING"


async def test_sync_client(target: str, isolated_tag: str) -> None:
    # In a thread: the server runs on this thread's event loop.
    await asyncio.to_thread(_use_sync_client, target, isolated_tag)


def _use_sync_client(target: str, isolated_tag: str) -> None:
    with Client(target) as client:
        assert client.health() == "SERVING"
        seen: list[IngestProgress] = []
        docs = [Document(f"{isolated_tag}-s{i}", f"Sync note {i}.", {"test": isolated_tag}) for i in range(3)]
        result = client.ingest(iter(docs), batch_size=2, on_progress=seen.append)
        assert result.documents == 3 and [p.batches for p in seen] == [1, 2]
        answer = client.answer(
            "Where is the sync note?",
            retrieval=Retrieval(top_k=1, filter={"test": isolated_tag}),
            max_tokens=4,
        )
        assert answer.sources[0].id.startswith(f"{isolated_tag}-s")
        assert answer.final.usage.completion_tokens >= 1
        assert client.delete([d.id for d in docs]).count == 3

        def bad_documents() -> Iterator[Document]:
            yield docs[0]
            raise ValueError("line 2 is not JSON")

        with pytest.raises(ValueError, match="line 2"):
            client.ingest(bad_documents())
