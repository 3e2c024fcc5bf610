"""Requests that do not parse become INVALID_ARGUMENT, not UNKNOWN.

grpc.aio parses a request before any handler runs; when protobuf refuses the bytes (a string field
that is not valid UTF-8, a broken wire format) the server answers UNKNOWN with the parser's
exception text. This interceptor swaps each method's request deserializer for one that hands the
failure on as a value, and raises InvalidArgument from inside the handler instead, where the error
mapping turns it into a status like every other bad input. It must sit inside ErrorMappingInterceptor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior
from rag_grpc.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    problem: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return deserialize


def _reject(field: str, request: UndecodableRequest) -> InvalidArgument:
    # protobuf's text names the message type and the problem ("String field had bad UTF-8"); nothing internal.
    return InvalidArgument(field, f"could not be parsed: {request.problem}")


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    index = 0
    async for request in requests:
        if isinstance(request, UndecodableRequest):
            raise _reject(f"requests[{index}]", request)
        yield request
        index += 1


def _checked(request: Any) -> Any:
    if isinstance(request, UndecodableRequest):
        raise _reject("request", request)
    if hasattr(request, "__aiter__"):  # a client-streaming call: check each message as it arrives
        return _checked_stream(request)
    return request


class RequestDecodingInterceptor(AroundCallInterceptor):
    def request_deserializer(
        self, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        return _tolerant(deserializer)

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> Any:
        return await behavior(_checked(request), context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> AsyncGenerator[Any, None]:
        async for message in behavior(_checked(request), context):
            yield message
