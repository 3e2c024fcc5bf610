"""OpenTelemetry traces (rag_grpc/tracing.py): a server span per RPC that continues the caller's trace,
the service's spans inside it, the trace id in the log line, status from the final gRPC code, and the
OTLP exporter configured by the standard OTEL_* variables, off by default."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from prometheus_client import CollectorRegistry

from rag_grpc.api.interceptors.chain import interceptor_chain
from rag_grpc.api.interceptors.drain import DrainInterceptor
from rag_grpc.api.interceptors.tracing import TracingInterceptor
from rag_grpc.engines import Engines
from rag_grpc.logging import configure_logging
from rag_grpc.metrics import GrpcMetrics
from rag_grpc.service.rag_service import _NO_SPAN
from rag_grpc.settings import Settings
from rag_grpc.tracing import Tracing
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, RunningServer, serving
from tests.conftest import free_loopback_port
from tests.helpers import bearer, collect, expect_status

GENERATE = "rag_grpc.v1.GenerateService/Generate"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """Tracing into the SDK's in-memory exporter, every span as soon as it ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing.of(provider), exporter
    provider.shutdown()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


async def _server_span(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The server spans named `name` once `count` of them ended (the server ends a span just after the
    client has the status)."""
    for _ in range(200):
        found = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == name]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"no server span {name}: {[s.name for s in exporter.get_finished_spans()]}")


def _children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent_id]


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def _store(server: RunningServer, tag: str) -> None:
    documents = [
        pb.Document(
            id=f"{tag}-lighthouse",
            text="The Cordouan lighthouse was the first to use a Fresnel lens, in 1823.",
            metadata={"test": tag},
        ),
        pb.Document(id=f"{tag}-coffee", text="Arabica coffee grows at altitude.", metadata={"test": tag}),
    ]
    await server.stubs.documents.Upsert(pb.UpsertRequest(documents=documents))


async def test_a_grounded_generate_is_one_trace_continued_from_traceparent_with_the_id_in_the_log_line(
    engines: Engines,
    settings: Settings,
    exported: tuple[Tracing, InMemorySpanExporter],
    log_stream: io.StringIO,
    isolated_tag: str,
) -> None:
    tracing, exporter = exported
    async with serving(engines, settings, full_service=True, tracing=tracing) as server:
        await _store(server, isolated_tag)
        exporter.clear()
        request = pb.GenerateRequest(
            prompt="Which lighthouse first used a Fresnel lens?",
            sampling=pb.SamplingParams(max_tokens=6, temperature=0),
            retrieval=pb.RetrievalOptions(top_k=2, filter={"test": isolated_tag}),
        )
        traceparent = ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")
        messages = [m async for m in server.stubs.generate.Generate(request, metadata=(traceparent,))]
        (root,) = await _server_span(exporter, GENERATE)

    assert messages[0].HasField("sources") and messages[-1].HasField("final")
    # The caller's trace continues: same trace id, the caller's span as parent.
    assert format_trace_id(root.context.trace_id) == TRACE_ID
    assert root.parent is not None and format_span_id(root.parent.span_id) == PARENT_ID
    assert _attributes(root) == {
        "rpc.system": "grpc",
        "rpc.service": "rag_grpc.v1.GenerateService",
        "rpc.method": "Generate",
        "rpc.grpc.status_code": 0,
        "rag.request_id": messages[-1].final.request_id,
    }
    assert root.status.status_code is StatusCode.UNSET

    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    steps = _children(spans, root)
    assert [s.name for s in steps] == ["cache.lookup", "retrieve", "prompt.build", "generate"]
    answer_cache, retrieve, prompt, generate = steps
    assert _attributes(answer_cache) == {"rag.cache": "generation", "rag.cache.hit": False}

    # Retrieval: its cache, the query's embedding (through the embedding cache) and the index search.
    retrieval_steps = _children(spans, retrieve)
    assert [s.name for s in retrieval_steps] == ["cache.lookup", "cache.lookup", "embed", "index.search"]
    assert _attributes(retrieval_steps[0]) == {"rag.cache": "retrieval", "rag.cache.hit": False}
    assert _attributes(retrieval_steps[1]) == {
        "rag.cache": "embedding",
        "rag.cache.hits": 0,
        "rag.cache.misses": 1,
    }
    embed = _attributes(retrieval_steps[2])
    assert embed["rag.embed.texts"] == 1 and embed["gen_ai.usage.input_tokens"] > 0
    assert _attributes(retrieve)["rag.retrieve.hits"] == 2
    # Only the document that mentions the question's subject (Fresnel) grounds the answer.
    assert _attributes(prompt) == {"rag.prompt.documents": 1}

    final = messages[-1].final
    generation = _attributes(generate)
    assert generation["gen_ai.request.model"] == generation["gen_ai.response.model"] == final.model
    assert generation["gen_ai.usage.input_tokens"] == final.usage.prompt_tokens > 0
    assert generation["gen_ai.usage.output_tokens"] == final.usage.completion_tokens == 6
    assert generation["gen_ai.response.finish_reasons"] == ("length",)
    (first_token,) = generate.events
    assert first_token.name == "first_token"
    assert generate.start_time is not None and first_token.timestamp > generate.start_time

    # The request log line carries the trace id.
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines() if line.startswith("{")]
    (line,) = [x for x in lines if x.get("event") == "rpc" and x["method"] == "/" + GENERATE]
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == format_span_id(root.context.span_id)
    assert line["request_id"] == final.request_id


async def test_a_replayed_answer_shows_the_cache_hit(
    engines: Engines, settings: Settings, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = exported
    request = pb.GenerateRequest(prompt="Say yes.", sampling=pb.SamplingParams(max_tokens=2, temperature=0))
    async with serving(engines, settings, full_service=True, tracing=tracing) as server:
        for _ in range(2):
            [m async for m in server.stubs.generate.Generate(request)]
        first, second = await _server_span(exporter, GENERATE, count=2)
    spans = exporter.get_finished_spans()
    assert [s.name for s in _children(spans, first)] == ["cache.lookup", "generate"]
    (lookup,) = _children(spans, second)
    assert _attributes(lookup) == {"rag.cache": "generation", "rag.cache.hit": True}


async def test_a_cancelled_stream_ends_its_spans_as_cancelled(
    engines: Engines, settings: Settings, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = exported
    request = pb.GenerateRequest(
        prompt="Tell a long story.", sampling=pb.SamplingParams(max_tokens=512, min_tokens=512)
    )
    async with serving(engines, settings, tracing=tracing) as server:
        call = server.stubs.generate.Generate(request)
        deltas = 0
        async for message in call:
            deltas += message.HasField("delta")
            if deltas == 2:
                call.cancel()
                break
        (root,) = await _server_span(exporter, GENERATE)
        for _ in range(200):  # the generation span ends when the engine stream is closed
            generations = [s for s in exporter.get_finished_spans() if s.name == "generate"]
            if generations:
                break
            await asyncio.sleep(0.01)
    assert _attributes(root)["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert root.status.status_code is StatusCode.UNSET  # the caller left: not the server's failure
    (generate,) = _children(exporter.get_finished_spans(), root)
    attributes = _attributes(generate)
    assert attributes["gen_ai.response.finish_reasons"] == ("abort",)
    assert 2 <= attributes["gen_ai.usage.output_tokens"] < 512
    assert [event.name for event in generate.events] == ["first_token"]


async def test_rejected_calls_get_a_span_with_their_code(
    engines: Engines, settings: Settings, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = exported
    long_request = pb.GenerateRequest(
        prompt="Tell a long story.", sampling=pb.SamplingParams(max_tokens=512, min_tokens=512)
    )
    async with serving(
        engines,
        settings,
        tracing=tracing,
        api_keys=API_KEYS,
        max_concurrent_generations=1,
        max_queued_generations=0,
    ) as server:
        # Refused by authentication: the caller's mistake.
        await expect_status(server.stubs.info.Info(pb.InfoRequest()), grpc.StatusCode.UNAUTHENTICATED)
        (unauthenticated,) = await _server_span(exporter, "rag_grpc.v1.InfoService/Info")
        # Refused by admission while the one slot is busy: UNAVAILABLE, a server-side condition.
        running = server.stubs.generate.Generate(long_request, metadata=bearer(ALICE_KEY))
        await running.read()
        refused = server.stubs.generate.Generate(long_request, metadata=bearer(ALICE_KEY))
        await expect_status(collect(refused), grpc.StatusCode.UNAVAILABLE)
        running.cancel()
        spans = await _server_span(exporter, GENERATE, count=2)

    assert _attributes(unauthenticated)["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert unauthenticated.status.status_code is StatusCode.UNSET
    unavailable = next(s for s in spans if _attributes(s)["rpc.grpc.status_code"] == 14)
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.status.description is not None
    assert unavailable.status.description.startswith("UNAVAILABLE: ")
    # Refused before any work: no child spans.
    finished = exporter.get_finished_spans()
    assert _children(finished, unauthenticated) == [] and _children(finished, unavailable) == []


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "rag"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_traces_are_off_unless_an_exporter_is_asked_for(environ: dict[str, str]) -> None:
    assert Tracing.from_environment(environ) is None


def test_an_unknown_exporter_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        Tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_off_by_default_nothing_is_added_to_a_call(engines: Engines, settings: Settings) -> None:
    # No tracer: no server span interceptor in the chain, and the service's steps use the shared no-op.
    chain = interceptor_chain(settings, GrpcMetrics(CollectorRegistry()), None, DrainInterceptor())
    assert not any(isinstance(interceptor, TracingInterceptor) for interceptor in chain)
    async with serving(engines, settings) as server:
        assert server.server.service._span("embed") is _NO_SPAN
        assert server.server.service._generation_span("model") is None


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_the_otlp_exporter_follows_the_standard_variables(
    engines: Engines, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = _Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = free_loopback_port()
    receiver.add_insecure_port(f"127.0.0.1:{port}")
    receiver.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        tracing = Tracing.from_environment()
        assert tracing is not None
        async with serving(engines, settings, tracing=tracing) as server:
            await server.stubs.embed.Embed(pb.EmbedRequest(texts=["traced"]))
        await asyncio.to_thread(tracing.shutdown)  # flushes the batch processor
    finally:
        receiver.stop(0)
    (resource_spans,) = [r for request in collector.requests for r in request.resource_spans]
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "rag-grpc"
    assert resource["deployment.environment"] == "test"
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert sorted(names) == ["embed", "rag_grpc.v1.EmbedService/Embed"]
