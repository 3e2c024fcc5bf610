"""A server started with embedder_precision=int8 embeds and retrieves through gRPC, and says which
embedder it runs. It shares the session's model_cache_dir, so the int8 export is the one that
tests/engines/test_onnx_embedder.py made (or makes, whichever runs first)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from rag_grpc.api.server import RagServer
from rag_grpc.engines import open_engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import doc


@pytest.fixture(scope="module")
async def int8_stubs(settings: Settings) -> AsyncIterator[Stubs]:
    int8_settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        host="127.0.0.1",
        port=0,
        log_json=True,
        shutdown_grace_s=1.0,
        generator_backend="none",
        embedder_precision="int8",
        model_cache_dir=settings.engines.model_cache_dir,
    )
    async with open_engines(int8_settings, with_generator=False) as engines:
        server = RagServer(int8_settings, RagService(engines, int8_settings))
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Stubs(channel)
        await server.stop(0)


async def test_int8_server_embeds_and_retrieves(int8_stubs: Stubs) -> None:
    info = await int8_stubs.info.Info(pb.InfoRequest())
    assert (info.embedder.backend, info.embedder.model) == ("onnxruntime", "all-MiniLM-L6-v2-int8")
    assert (info.embedder.device, info.embedder.dimension) == ("cpu", 384)

    embedded = await int8_stubs.embed.Embed(
        pb.EmbedRequest(texts=["Sea otters hold hands while they sleep."])
    )
    assert embedded.model == "all-MiniLM-L6-v2-int8" and embedded.dimension == 384
    assert embedded.total_tokens > 0
    assert abs(float(np.linalg.norm(embedded.embeddings[0].values)) - 1.0) < 1e-4

    await int8_stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc("otters", "Sea otters hold hands while they sleep so they do not drift apart."),
                doc("tax", "Quarterly tax filings are due at the end of the month."),
            ]
        )
    )
    response = await int8_stubs.retrieve.Retrieve(pb.RetrieveRequest(text="how do otters sleep?", top_k=2))
    assert [hit.id for hit in response.hits] == ["otters", "tax"]
    assert response.hits[0].score > response.hits[1].score
