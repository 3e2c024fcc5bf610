"""A server span per RPC (OpenTelemetry), in the chain only when traces are on (see rag_grpc/tracing.py).

Outermost, so that the span covers the whole call, refusals by the interceptors included, and the request
log line, written inside it, carries its trace id. The caller's trace continues: the span's parent is the
context propagated in the request metadata (W3C `traceparent`/`tracestate`, or what OTEL_PROPAGATORS
selects). While the call runs, `trace_id` and `span_id` are bound to every log line it writes.

Names and attributes follow the OpenTelemetry RPC conventions: the span is "<service>/<method>" of kind
SERVER with rpc.system, rpc.service, rpc.method and rpc.grpc.status_code, plus the call's request id.
Its status follows the final gRPC code the way those conventions say a server should: ERROR for the codes
that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS),
unset for OK and for the caller's own mistakes (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED...),
which rpc.grpc.status_code still shows.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import grpc
import structlog
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, format_span_id, format_trace_id

from rag_grpc.api.call_context import current_call
from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior, RpcMethod, final_code

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _carrier(metadata: Any) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


class TracingInterceptor(AroundCallInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def _server_span(self, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod) -> Iterator[Span]:
        parent = propagate.extract(_carrier(context.invocation_metadata()))
        attributes = {"rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.name}
        with self._tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            # The status comes from the gRPC code (_finish); exceptions here are how grpc.aio ends calls
            # (AbortError, CancelledError) and would only repeat it.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            ids = span.get_span_context()
            with structlog.contextvars.bound_contextvars(
                trace_id=format_trace_id(ids.trace_id), span_id=format_span_id(ids.span_id)
            ):
                yield span

    @staticmethod
    def _finish(span: Span, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> None:
        code = final_code(exc, context)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        call = current_call()  # the request-log interceptor, inside this one, started the call's record
        if call is not None and call.request_id:
            span.set_attribute("rag.request_id", call.request_id)
        if code in SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {context.details() or ''}"))

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        with self._server_span(context, method) as span:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._finish(span, context, exc)
                raise
            self._finish(span, context, None)
            return response

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        with self._server_span(context, method) as span:
            try:
                async with aclosing(behavior(request, context)) as messages:
                    async for message in messages:
                        yield message
            except BaseException as exc:
                self._finish(span, context, exc)
                raise
            self._finish(span, context, None)
