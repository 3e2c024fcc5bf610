"""A base for interceptors that act around a call, for every RPC kind.

grpc.aio calls a handler either as a coroutine (unary responses, or a streaming handler that uses
context.write) or as an async generator (streaming responses via yield). A wrapper must keep the
kind of what it wraps: wrapping an async generator in a coroutine makes the server send no
messages and report OK. So there are exactly two hooks: `around_call` for awaitable behaviours and
`around_stream` for async-generator behaviours.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from functools import lru_cache
from typing import Any

import grpc

# What context.write (or sending a status) raises once the client has left: the call is over, no status
# can be sent, and nothing failed on our side. grpc exposes no public name for it, and the context's
# public cancelled()/done() still say False at that moment, so the private class is imported without a
# fallback: if grpc moves it, the import fails at start-up (and tests/api/interceptors/test_call_gone.py
# says why) instead of client departures silently turning into INTERNAL.
from grpc._cython.cygrpc import ExecuteBatchError as _CallGone

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def call_gone(exc: BaseException) -> bool:
    """True when `exc` says the client already left (cancelled, or its deadline passed) during a write."""
    return isinstance(exc, _CallGone)


# The handler kinds and the public factory that builds each.
_HANDLER_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class RpcMethod(str):
    """The full method name ("/pkg.Service/Method"), as a str so hooks can use it as one, plus what
    the interceptors need to know about the RPC without each parsing it again."""

    service: str
    name: str
    request_streaming: bool
    response_streaming: bool

    @property
    def grpc_type(self) -> str:
        """The RPC kind as the Prometheus gRPC conventions label it."""
        if self.request_streaming:
            return "bidi_stream" if self.response_streaming else "client_stream"
        return "server_stream" if self.response_streaming else "unary"


@lru_cache(maxsize=1024)
def rpc_method(full_name: str, request_streaming: bool, response_streaming: bool) -> RpcMethod:
    method = RpcMethod(full_name)
    service, _, name = full_name.lstrip("/").partition("/")
    method.service, method.name = service, name
    method.request_streaming, method.response_streaming = request_streaming, response_streaming
    return method


class AroundCallInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self.applies_to(handler_call_details.method):
            return handler
        method = rpc_method(
            handler_call_details.method, handler.request_streaming, handler.response_streaming
        )
        for kind, factory in _HANDLER_FACTORIES.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrapped = (
                    self._wrap_stream(behavior, method)
                    if inspect.isasyncgenfunction(behavior)
                    else self._wrap_call(behavior, method)
                )
                rebuilt: grpc.RpcMethodHandler[Any, Any] = factory(
                    wrapped,
                    request_deserializer=self.request_deserializer(handler.request_deserializer),
                    response_serializer=handler.response_serializer,
                )
                return rebuilt
        return handler

    def applies_to(self, method: str) -> bool:
        return True

    def request_deserializer(
        self, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        """The deserializer of the rebuilt handler; an interceptor overrides it to parse requests its own way."""
        return deserializer

    def _wrap_call(self, behavior: Behavior, method: RpcMethod) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self.around_call(behavior, request, context, method)

        return call

    def _wrap_stream(self, behavior: Behavior, method: RpcMethod) -> Behavior:
        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncGenerator[Any, None]:
            # aclosing at every layer: when the call ends early (cancel, abort) each inner generator is
            # closed now, in this task, so its finally blocks see the end instead of the garbage collector.
            async with aclosing(self.around_stream(behavior, request, context, method)) as messages:
                async for message in messages:
                    yield message

        return stream

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        """For unary responses and for streaming handlers that write with context.write."""
        return await behavior(request, context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        """For streaming handlers that yield their messages. Overrides relay with `aclosing` like this."""
        async with aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message


class ObservedWrites:
    """A context whose write() reports each message once sent: how an interceptor sees the messages of a
    streaming handler that writes (context.write) instead of yielding. Everything else is delegated."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], on_sent: Callable[[Any], None]) -> None:
        self._context = context
        self._on_sent = on_sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._on_sent(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def final_code(exc: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The status the client sees when the handler returned (exc None) or raised `exc`.

    grpc.aio has no hook for the final status, so it is read back: abort() records its code on the
    context; a cancelled handler gets CancelledError (awaiting), GeneratorExit (closed while blocked in
    a yield) or a failed write (see call_gone), and an expired deadline looks the same, so the time left
    tells the two apart (a client that gives up at its own deadline a moment before the server's
    counts as CANCELLED: on the server the two cannot be told apart).
    """
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        return context.code() or (grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) or call_gone(exc):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # What grpc reports for an exception that escapes a handler (the error map should leave none).
    return grpc.StatusCode.UNKNOWN
