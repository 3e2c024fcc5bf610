from __future__ import annotations

import asyncio
import time

import grpc

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.engines.batching import BatchingEmbedder
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import expect_status


async def test_a_full_embedding_queue_answers_unavailable_at_once(
    engines: Engines, settings: Settings
) -> None:
    assert isinstance(engines.embedder, BatchingEmbedder)
    # A long max_wait holds the first call in the queue, which then has no room for a second text.
    async with BatchingEmbedder(
        engines.embedder.inner, max_batch_size=8, max_wait_s=30, max_queued_texts=1
    ) as embedder:
        crowded = Engines(embedder=embedder, vector_store=engines.vector_store, generators=engines.generators)
        server = RagServer(settings, RagService(crowded, settings))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stubs = Stubs(channel)
                waiting = stubs.embed.Embed(pb.EmbedRequest(texts=["first in line"]))
                while embedder.queued_texts == 0:
                    await asyncio.sleep(0.005)
                started = time.perf_counter()
                error = await expect_status(
                    stubs.retrieve.Retrieve(pb.RetrieveRequest(text="second in line")),
                    grpc.StatusCode.UNAVAILABLE,
                )
                assert time.perf_counter() - started < 1.0
                assert "overloaded" in (error.details() or "")
                waiting.cancel()
                # The cancelled call leaves the queue without being computed.
                while embedder.queued_texts:
                    await asyncio.sleep(0.005)
                assert embedder.stats.dropped_items == 1 and embedder.stats.items == 0
        finally:
            await server.stop(0)
