"""Server-side limits on streams: the deadline ceiling for calls without a deadline, and the stall
timeout for clients that stop reading. Uses a second server with small limits over the same engines."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.helpers import collect

STALLED_CLIENT = """
import sys, time, grpc
from rag_grpc.v1 import rag_pb2 as pb, rag_pb2_grpc as pb_grpc
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.http2.bdp_probe", 0)])
call = pb_grpc.GenerateServiceStub(channel).Generate(pb.GenerateRequest(
    prompt="Tell me everything about the documents.",
    retrieval=pb.RetrievalOptions(top_k=40, filter={"test": sys.argv[2]}),
    sampling=pb.SamplingParams(max_tokens=400)))
print("started", flush=True)
time.sleep(600)  # never reads: with no read pending, the client grants only a small flow-control window
"""


async def _server_with(engines: Engines, settings: Settings, **limits: float) -> RagServer:
    strict = settings.with_overrides(**limits)
    server = RagServer(strict, RagService(engines, strict))
    await server.start()
    return server


@pytest.fixture(scope="module")
async def ceiling_server(engines: Engines, settings: Settings) -> AsyncIterator[str]:
    server = await _server_with(engines, settings, call_deadline_ceiling_s=1.5)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def stall_server(engines: Engines, settings: Settings) -> AsyncIterator[str]:
    # A short grounded prompt: prefill is one step that cancellation cannot interrupt, and thousands of
    # tokens take seconds on this CPU.
    limits = {"stream_stall_timeout_s": 5.0, "stream_buffer_events": 4, "max_grounding_chars": 300}
    server = await _server_with(engines, settings, **limits)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def _wait_idle(engines: Engines, timeout: float = 5.0) -> int:
    generator = engines.default_generator
    deadline = time.monotonic() + timeout
    while generator.num_running_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return generator.num_running_requests()


async def test_a_call_without_deadline_gets_the_server_ceiling(ceiling_server: str, engines: Engines) -> None:
    async with grpc.aio.insecure_channel(ceiling_server) as channel:
        stub = pb_grpc.GenerateServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(
                stub.Generate(
                    pb.GenerateRequest(
                        prompt="Write a long story.", sampling=pb.SamplingParams(max_tokens=1000)
                    )
                )
            )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "1.5 s" in (caught.value.details() or "")
    assert time.monotonic() - started < 10
    assert await _wait_idle(engines) == 0


async def test_a_client_that_stops_reading_is_cut_off_and_its_generation_aborted(
    stall_server: str, engines: Engines, isolated_tag: str
) -> None:
    # Sources of ~300 KB exceed the flow-control window of a client that reads nothing, so the write blocks.
    async with grpc.aio.insecure_channel(stall_server) as channel:
        documents = [
            pb.Document(id=f"{isolated_tag}-{i}", text=f"filler {i} " * 800, metadata={"test": isolated_tag})
            for i in range(40)
        ]
        await pb_grpc.DocumentServiceStub(channel).Upsert(pb.UpsertRequest(documents=documents), timeout=120)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STALLED_CLIENT, stall_server, isolated_tag, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert client.stdout is not None
        assert (await client.stdout.readline()).strip() == b"started"
        generator = engines.default_generator
        deadline = time.monotonic() + 5
        while not generator.num_running_requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert generator.num_running_requests() == 1, (
            "the generation should run while the sources write waits"
        )
        # The stall timeout (5 s) aborts the 400-token generation (over 20 s of decoding) and frees the engine.
        # The status can only follow the pending write, so a client that never reads again is ended by its
        # deadline or the server's ceiling.
        assert await _wait_idle(engines, timeout=10.0) == 0
    finally:
        if client.returncode is None:
            client.kill()
        await client.wait()
