"""Admission control for expensive methods (generation): a slot per running call, a bounded queue, an
optional per-caller quota (limits/admission.py). A refusal is immediate: RESOURCE_EXHAUSTED for the
caller's quota, UNAVAILABLE for a full queue or a draining server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import aclosing
from typing import Any

import grpc

from rag_grpc.api import status
from rag_grpc.api.call_context import current_caller
from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior, RpcMethod
from rag_grpc.errors import RagError, ResourceExhausted
from rag_grpc.limits.admission import Admission
from rag_grpc.metrics import GrpcMetrics


class AdmissionInterceptor(AroundCallInterceptor):
    def __init__(self, admission: Admission, metrics: GrpcMetrics, methods: Collection[str]) -> None:
        self._admission = admission
        self._metrics = metrics
        self._methods = frozenset(methods)
        metrics.generations_running.set_function(lambda: admission.running)
        metrics.generations_waiting.set_function(lambda: admission.waiting)

    def applies_to(self, method: str) -> bool:
        return method in self._methods

    async def _enter(self, context: grpc.aio.ServicerContext) -> str:
        caller = current_caller().name
        try:
            await self._admission.acquire(caller)
        except RagError as refused:
            if isinstance(refused, ResourceExhausted):
                reason = "caller_quota"
            else:
                reason = "draining" if self._admission.draining else "queue_full"
            self._metrics.rate_limited.labels(caller, reason).inc()
            await status.abort(context, refused)
        return caller

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: RpcMethod
    ) -> Any:
        caller = await self._enter(context)
        try:
            return await behavior(request, context)
        finally:
            self._admission.release(caller)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: RpcMethod
    ) -> AsyncIterator[Any]:
        caller = await self._enter(context)
        try:
            async with aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    yield message
        finally:
            self._admission.release(caller)
