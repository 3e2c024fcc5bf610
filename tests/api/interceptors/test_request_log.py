"""The JSON log line of each call: request id (the client's or a new one, echoed back), method, caller,
status, latency, token counts; never the key, and request bodies only when asked for. Unexpected
errors reach the caller as a generic INTERNAL while the traceback goes to the log."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

from rag_grpc.api.interceptors.chain import interceptor_chain
from rag_grpc.api.interceptors.drain import DrainInterceptor
from rag_grpc.api.status import INTERNAL_MESSAGE
from rag_grpc.engines import Engines
from rag_grpc.logging import configure_logging
from rag_grpc.metrics import GrpcMetrics
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, serving
from tests.helpers import bearer, collect, expect_status

SECRET_TEXT = "the-document-text-nobody-should-log"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def rpc_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "rpc"]


async def test_one_json_line_per_call_with_id_status_latency_and_no_key(
    engines: Engines, settings: Settings, log_stream: io.StringIO
) -> None:
    async with serving(engines, settings, api_keys=API_KEYS) as s:
        call = s.stubs.embed.Embed(
            pb.EmbedRequest(texts=[SECRET_TEXT]),
            metadata=(*bearer(ALICE_KEY), ("x-request-id", "client-chosen-id-42")),
        )
        await call
        assert ("x-request-id", "client-chosen-id-42") in tuple(await call.trailing_metadata())

        generated = s.stubs.generate.Generate(
            pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=3)),
            metadata=bearer(ALICE_KEY),
        )
        messages = await collect(generated)
        # Streams have it before their first message, and at the end.
        generated_id = dict(await generated.initial_metadata())["x-request-id"]
        assert dict(await generated.trailing_metadata())["x-request-id"] == generated_id

        refused = s.stubs.info.Info(
            pb.InfoRequest(), metadata=(("authorization", "Bearer wrong-key-0000000000000000"),)
        )
        await expect_status(refused, grpc.StatusCode.UNAUTHENTICATED)
        refused_id = dict(await refused.trailing_metadata())["x-request-id"]

    lines = rpc_lines(log_stream)
    assert len(lines) == 3
    embed, generate, info = lines
    assert embed["request_id"] == "client-chosen-id-42"
    assert embed["method"] == "/rag_grpc.v1.EmbedService/Embed"
    assert embed["code"] == "OK" and embed["caller"] == "alice"
    assert embed["latency_ms"] > 0 and embed["embedded_tokens"] > 0
    assert embed["peer"].startswith("ipv4:127.0.0.1:")
    assert embed["level"] == "info" and "timestamp" in embed

    assert generate["request_id"] == generated_id and len(generated_id) == 32
    assert generate["code"] == "OK" and generate["messages_sent"] == len(messages)
    usage = messages[-1].final.usage
    assert (generate["prompt_tokens"], generate["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )

    assert info["request_id"] == refused_id and info["code"] == "UNAUTHENTICATED"
    assert info["caller"] == "anonymous" and "unknown API key" in info["details"]

    everything = log_stream.getvalue()
    assert ALICE_KEY not in everything and "wrong-key-0000000000000000" not in everything
    assert SECRET_TEXT not in everything


async def test_bad_request_ids_are_replaced(
    engines: Engines, settings: Settings, log_stream: io.StringIO
) -> None:
    async with serving(engines, settings) as s:
        call = s.stubs.info.Info(pb.InfoRequest(), metadata=(("x-request-id", "x" * 500),))
        await call
        echoed = dict(await call.trailing_metadata())["x-request-id"]
    assert echoed != "x" * 500 and len(echoed) == 32
    assert rpc_lines(log_stream)[0]["request_id"] == echoed


async def test_request_bodies_are_logged_only_in_debug(
    engines: Engines, settings: Settings, log_stream: io.StringIO
) -> None:
    async with serving(engines, settings, log_payloads=True) as s:
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=[SECRET_TEXT]))
    (line,) = rpc_lines(log_stream)
    assert SECRET_TEXT in line["request"]


async def test_unexpected_errors_are_internal_for_the_caller_with_the_traceback_in_the_log(
    settings: Settings, log_stream: io.StringIO
) -> None:
    async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("database password is hunter2")

    async def broken_stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        yield b"first"
        raise RuntimeError("database password is hunter2")

    server = grpc.aio.server(
        interceptors=interceptor_chain(settings, GrpcMetrics(CollectorRegistry()), None, DrainInterceptor())
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(broken),
        "Stream": grpc.unary_stream_rpc_method_handler(broken_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Broken", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = await expect_status(
                channel.unary_unary("/test.Broken/Unary")(b""), grpc.StatusCode.INTERNAL
            )
            stream_call = channel.unary_stream("/test.Broken/Stream")(b"")
            assert await stream_call.read() == b"first"
            streamed = await expect_status(stream_call.read(), grpc.StatusCode.INTERNAL)
    finally:
        await server.stop(0)
    for error in (unary, streamed):
        assert error.details() == INTERNAL_MESSAGE
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    failures = [r for r in records if r["event"] == "unhandled_error"]
    assert len(failures) == 2
    assert all(
        "RuntimeError: database password is hunter2" in r["exception"] and r["request_id"] for r in failures
    )
    assert [r["code"] for r in records if r["event"] == "rpc"] == ["INTERNAL", "INTERNAL"]


class RecordingGenerator:
    """The real generator, noting the request id each engine request carries."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.request_ids: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, request: Any) -> Any:
        self.request_ids.append(request.request_id)
        return self.inner.generate(request)


async def test_the_callers_request_id_is_the_id_of_the_log_the_trailer_the_final_and_the_engine(
    engines: Engines, settings: Settings, log_stream: io.StringIO
) -> None:
    recording = RecordingGenerator(engines.default_generator)
    spied = Engines(engines.embedder, engines.vector_store, {recording.info.model: recording})  # type: ignore[dict-item]
    request = pb.GenerateRequest(prompt="Say hello.", sampling=pb.SamplingParams(max_tokens=4))
    async with serving(spied, settings) as s:
        call = s.stubs.generate.Generate(request, metadata=(("x-request-id", "abc-123"),))
        messages = await collect(call)
        assert messages[-1].final.request_id == "abc-123"
        assert ("x-request-id", "abc-123") in tuple(await call.trailing_metadata())
        assert recording.request_ids == ["abc-123"]
        (line,) = [line for line in rpc_lines(log_stream) if line["method"].endswith("/Generate")]
        assert line["request_id"] == "abc-123" and line["code"] == "OK"

        # A caller reusing an id while its first call is in flight gets a suffixed one, everywhere.
        long_call = s.stubs.generate.Generate(
            pb.GenerateRequest(prompt="Write a long story.", sampling=pb.SamplingParams(max_tokens=400)),
            metadata=(("x-request-id", "abc-123"),),
        )
        await long_call.read()
        second = s.stubs.generate.Generate(request, metadata=(("x-request-id", "abc-123"),))
        assert (await collect(second))[-1].final.request_id == "abc-123.2"
        assert ("x-request-id", "abc-123.2") in tuple(await second.trailing_metadata())
        long_call.cancel()
        assert recording.request_ids == ["abc-123", "abc-123", "abc-123.2"]
