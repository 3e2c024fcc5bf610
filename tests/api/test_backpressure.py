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
    async with BatchingEmbedder(
        engines.embedder.inner, max_batch_size=8, max_wait_s=30, max_queued_texts=2
    ) as embedder:
        crowded = Engines(embedder=embedder, vector_store=engines.vector_store, generators=engines.generators)
        server = RagServer(settings, RagService(crowded, settings))
        await server.start()
        # Two calls in one tick look like concurrency: the worker holds them for company (30 s), so the
        # queue is full when the gRPC call arrives.
        waiting = [
            asyncio.create_task(embedder.embed([text])) for text in ("first in line", "second in line")
        ]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                while embedder.queued_texts < 2:
                    await asyncio.sleep(0.005)
                started = time.perf_counter()
                error = await expect_status(
                    Stubs(channel).retrieve.Retrieve(pb.RetrieveRequest(text="third in line")),
                    grpc.StatusCode.UNAVAILABLE,
                )
                assert time.perf_counter() - started < 1.0
                assert "overloaded" in (error.details() or "")
        finally:
            for task in waiting:
                task.cancel()
            await server.stop(0)
        # The cancelled callers left the queue without being computed.
        assert embedder.stats.dropped_items == 2 and embedder.stats.items == 0
