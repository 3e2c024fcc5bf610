"""Per-caller, per-method rate limits (requests and estimated tokens) in front of the handlers.

A refused call gets RESOURCE_EXHAUSTED with RetryInfo and `retry-after` (see api/status.py). For
client-streaming calls (Ingest) each message is priced as it arrives; the call counts as one request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from rag_grpc.api import status
from rag_grpc.api.call_context import current_caller
from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior, RpcMethod
from rag_grpc.api.request_cost import request_tokens
from rag_grpc.limits.rate_limiter import RateLimiter
from rag_grpc.metrics import GrpcMetrics


class RateLimitInterceptor(AroundCallInterceptor):
    def __init__(self, limiter: RateLimiter, metrics: GrpcMetrics, default_max_tokens: int) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._default_max_tokens = default_max_tokens

    def applies_to(self, method: str) -> bool:
        return self._limiter.rule_for(method) is not None

    async def _charge(
        self, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod, request: Any, requests: int
    ) -> None:
        caller = current_caller().name
        tokens = request_tokens(request, self._default_max_tokens)
        refusal = await self._limiter.check(caller, method, requests, tokens)
        if refusal is not None:
            self._metrics.rate_limited.labels(caller, refusal.reason).inc()
            await status.abort(context, refusal.error)

    async def _charged_messages(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        first = True
        async for request in requests:
            await self._charge(context, method, request, requests=1 if first else 0)
            first = False
            yield request

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        if method.request_streaming:
            request = self._charged_messages(request, context, method)
        else:
            await self._charge(context, method, request, requests=1)
        return await behavior(request, context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        if method.request_streaming:
            request = self._charged_messages(request, context, method)
        else:
            await self._charge(context, method, request, requests=1)
        async with aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message
