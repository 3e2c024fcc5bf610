"""Shared fixtures: real engines loaded once per session, and a real in-process server on a free port.

Tests share one server and one index, so each test uses its own document ids and a metadata tag
(`isolated_tag`) to stay independent of the others.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines, open_engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def settings() -> Settings:
    # _env_file=None: a developer's .env must not change what the tests see.
    return Settings(_env_file=None, host="127.0.0.1", port=0, log_json=True, shutdown_grace_s=1.0)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def engines(settings: Settings) -> AsyncIterator[Engines]:
    async with open_engines(settings) as started:
        yield started


@pytest.fixture(scope="session")
async def service(engines: Engines, settings: Settings) -> RagService:
    return RagService(engines, settings)


@pytest.fixture(scope="session")
async def server(service: RagService, settings: Settings) -> AsyncIterator[RagServer]:
    rag_server = RagServer(settings, service)
    await rag_server.start()
    yield rag_server
    await rag_server.stop(0)


@pytest.fixture(scope="session")
def target(server: RagServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as chan:
        yield chan


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.embed = pb_grpc.EmbedServiceStub(channel)
        self.retrieve = pb_grpc.RetrieveServiceStub(channel)
        self.generate = pb_grpc.GenerateServiceStub(channel)
        self.documents = pb_grpc.DocumentServiceStub(channel)
        self.info = pb_grpc.InfoServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


@pytest.fixture(scope="session")
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def isolated_tag() -> str:
    """A metadata value no other test uses: filter on {"test": isolated_tag} to see only your documents."""
    return uuid.uuid4().hex
