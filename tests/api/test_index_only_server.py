"""generator_backend=none: a server that loads no generator still serves embeddings, retrieval and
documents, and answers Generate with FAILED_PRECONDITION instead of failing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import collect, expect_status


@pytest.fixture
async def index_only(engines: Engines, settings: Settings) -> AsyncIterator[Stubs]:
    service = RagService(Engines(engines.embedder, engines.vector_store, generators={}), settings)
    server = RagServer(settings, service)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Stubs(channel)
    await server.stop(0)


async def test_generate_is_refused_and_the_rest_works(index_only: Stubs) -> None:
    error = await expect_status(
        collect(index_only.generate.Generate(pb.GenerateRequest(prompt="hi"))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert (error.details() or "").startswith("model:")
    await expect_status(
        collect(index_only.generate.Generate(pb.GenerateRequest())), grpc.StatusCode.INVALID_ARGUMENT
    )
    info = await index_only.info.Info(pb.InfoRequest())
    assert list(info.generators) == []
    assert len((await index_only.embed.Embed(pb.EmbedRequest(texts=["still embeds"]))).embeddings) == 1


def test_the_setting_accepts_none() -> None:
    assert Settings(_env_file=None, generator_backend="none").engines.generator_backend == "none"  # type: ignore[call-arg]
