"""Prometheus gRPC metrics for every RPC kind: started, handled by final code, handling time to the last
message, messages received and sent.

It sits outside authentication and rate limiting, so refused calls are counted with the code their
caller saw (an operator needs the rate of UNAUTHENTICATED and RESOURCE_EXHAUSTED most of all).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client.metrics import Counter, Histogram

from rag_grpc.api.interceptors.base import (
    AroundCallInterceptor,
    Behavior,
    ObservedWrites,
    RpcMethod,
    final_code,
)
from rag_grpc.metrics import GrpcMetrics


@dataclass(frozen=True, slots=True)
class _MethodMetrics:
    """The labelled children of one method, resolved once instead of on every call."""

    started: Counter
    received: Counter
    sent: Counter
    seconds: Histogram


class MetricsInterceptor(AroundCallInterceptor):
    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics
        self._by_method: dict[str, _MethodMetrics] = {}
        self._handled: dict[tuple[str, grpc.StatusCode], Counter] = {}

    def _for(self, method: RpcMethod) -> _MethodMetrics:
        found = self._by_method.get(method)
        if found is None:
            labels = (method.grpc_type, method.service, method.name)
            m = self._metrics
            found = _MethodMetrics(
                m.started.labels(*labels),
                m.msg_received.labels(*labels),
                m.msg_sent.labels(*labels),
                m.handling_seconds.labels(*labels),
            )
            self._by_method[method] = found
        return found

    def _finish(self, method: RpcMethod, m: _MethodMetrics, started: float, code: grpc.StatusCode) -> None:
        m.seconds.observe(time.perf_counter() - started)
        handled = self._handled.get((method, code))
        if handled is None:
            handled = self._metrics.handled.labels(method.grpc_type, method.service, method.name, code.name)
            self._handled[(method, code)] = handled
        handled.inc()

    def _count_requests(self, request: Any, method: RpcMethod, m: _MethodMetrics) -> Any:
        if method.request_streaming:
            return _counted(request, m.received)
        m.received.inc()
        return request

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        m = self._for(method)
        m.started.inc()
        started = time.perf_counter()
        request = self._count_requests(request, method, m)
        # A streaming handler that got here writes with context.write (one that yields goes to around_stream).
        handler_context: Any = (
            ObservedWrites(context, lambda _: m.sent.inc()) if method.response_streaming else context
        )
        try:
            response = await behavior(request, handler_context)
        except BaseException as exc:
            self._finish(method, m, started, final_code(exc, context))
            raise
        if not method.response_streaming:
            m.sent.inc()
        self._finish(method, m, started, final_code(None, context))
        return response

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        m = self._for(method)
        m.started.inc()
        started = time.perf_counter()
        request = self._count_requests(request, method, m)
        try:
            async with aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    yield message
                    # Resumed: the server has taken the message.
                    m.sent.inc()
        except BaseException as exc:
            self._finish(method, m, started, final_code(exc, context))
            raise
        self._finish(method, m, started, final_code(None, context))


async def _counted(requests: AsyncIterator[Any], received: Counter) -> AsyncGenerator[Any, None]:
    async for request in requests:
        received.inc()
        yield request
