"""Shared fixtures: real engines loaded once per session, and a real in-process server on a free port.

Tests share one server and one index, so each test uses its own document ids and a metadata tag
(`isolated_tag`) to stay independent of the others.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2_grpc

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines, open_engines
from rag_grpc.engines.model_files import converted_model_dir, resolve_generator_source
from rag_grpc.engines.vllm_generator import VllmGenerator
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.vllm_workers import SERVED_MODEL, Fleet


@pytest.fixture(scope="session")
def settings() -> Settings:
    # _env_file=None: a developer's .env must not change what the tests see.
    return Settings(_env_file=None, host="127.0.0.1", port=0, log_json=True, shutdown_grace_s=1.0)  # type: ignore[call-arg]


def _generator_dir(settings: Settings) -> Path:
    source = resolve_generator_source(settings.engines.generator_model)
    return (
        converted_model_dir(source, settings.engines.model_cache_dir) if source.suffix == ".gguf" else source
    )


@pytest.fixture(scope="session")
def generator_model_dir(settings: Settings) -> Path:
    return _generator_dir(settings)


# Filled by pytest_collection_modifyitems (a hook cannot hand a value to a fixture otherwise).
_launched: dict[str, Fleet] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Starts the vLLM workers once the run is known to need them, so their start-up (~20 s each on
    2 cores) overlaps the tests that come first."""
    needed = any(
        "vllm_fleet" in getattr(item, "fixturenames", ()) or item.get_closest_marker("vllm_fleet")
        for item in items
    )
    if needed and "fleet" not in _launched:
        log_dir = Path(tempfile.mkdtemp(prefix="rag-grpc-vllm-"))
        _launched["fleet"] = Fleet.launch(
            _generator_dir(Settings(_env_file=None)), log_dir, free_loopback_port
        )  # type: ignore[call-arg]


def pytest_unconfigure() -> None:
    if "fleet" in _launched:
        _launched["fleet"].stop()


@pytest.fixture(scope="session")
def vllm_fleet() -> Fleet:
    """Two vLLM gRPC workers and two vLLM OpenAI workers, real, on loopback (see tests/vllm_workers.py)."""
    fleet = _launched["fleet"]  # launched by pytest_collection_modifyitems
    fleet.wait_ready()
    return fleet


@pytest.fixture(scope="session")
async def vllm_generator(generator_model_dir: Path) -> AsyncIterator[VllmGenerator]:
    """vLLM for CPU in this process (its engine core in a child), once per session: eager, float32."""
    generator = VllmGenerator(
        str(generator_model_dir),
        None,
        SERVED_MODEL,
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        enforce_eager=True,
        kv_cache_memory_bytes=512 * 1024 * 1024,
    )
    async with generator:
        yield generator


@pytest.fixture(scope="session")
async def engines(settings: Settings) -> AsyncIterator[Engines]:
    async with open_engines(settings) as started:
        yield started


@pytest.fixture(scope="session")
async def service(engines: Engines, settings: Settings) -> RagService:
    return RagService(engines, settings)


@pytest.fixture(scope="session")
async def server(service: RagService, settings: Settings) -> AsyncIterator[RagServer]:
    # The default chain (no keys, no rate limits): what `make serve` runs.
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
        self.admin = pb_grpc.AdminServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


@pytest.fixture(scope="session")
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def isolated_tag() -> str:
    """A metadata value no other test uses: filter on {"test": isolated_tag} to see only your documents."""
    return uuid.uuid4().hex


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence, for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make test installs it: apt-get install -y redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_loopback_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real milvus-lite server (Milvus's gRPC protocol) on a free loopback port for the whole session.

    milvus-lite is single-writer per collection: tests give each store its own collection, and write to
    a shared one from one client at a time."""
    from pymilvus import MilvusClient, MilvusException

    workdir = tmp_path_factory.mktemp("milvus")
    port = free_loopback_port()
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(workdir / "data")]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            MilvusClient(uri=uri, timeout=2).close()
            break
        except MilvusException:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"milvus-lite did not start on port {port}: see {workdir / 'server.log'}")
            time.sleep(0.2)
    yield uri
    process.terminate()
    process.wait(timeout=10)
    log.close()
