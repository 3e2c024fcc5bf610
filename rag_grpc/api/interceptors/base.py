"""A base for interceptors that act around a call, for every RPC kind.

grpc.aio calls a handler either as a coroutine (unary responses, or a streaming handler that uses
context.write) or as an async generator (streaming responses via yield). A wrapper must keep the
kind of what it wraps: wrapping an async generator in a coroutine makes the server send no
messages and report OK. So there are exactly two hooks: `around_call` for awaitable behaviours and
`around_stream` for async-generator behaviours.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class AroundCallInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self.applies_to(handler_call_details.method):
            return handler
        method = handler_call_details.method
        fields = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        for field in fields:
            behavior = getattr(handler, field)
            if behavior is not None:
                wrapped = (
                    self._wrap_stream(behavior, method)
                    if inspect.isasyncgenfunction(behavior)
                    else self._wrap_call(behavior, method)
                )
                return handler._replace(**{field: wrapped})
        return handler

    def applies_to(self, method: str) -> bool:
        return True

    def _wrap_call(self, behavior: Behavior, method: str) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self.around_call(behavior, request, context, method)

        return call

    def _wrap_stream(self, behavior: Behavior, method: str) -> Behavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for message in self.around_stream(behavior, request, context, method):
                yield message

        return stream

    async def around_call(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: str) -> Any:
        return await behavior(request, context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: str
    ) -> AsyncIterator[Any]:
        async for message in behavior(request, context):
            yield message
