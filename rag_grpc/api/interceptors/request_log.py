"""Request ids and one JSON log line per RPC.

Outermost in the chain but for tracing: it starts the call record (call_context) that the inner interceptors fill in,
so its line names the caller and the final status whoever refused the call.

The request id is the client's `x-request-id` when it is a sane one (1..128 printable ASCII characters
without spaces), else a new one. It is the one id of the call everywhere: echoed in the trailing
metadata of every call and in the initial metadata of streaming responses (so a client has it before
the stream ends), bound to every log line written during the call, Generate's `Final.request_id`, and
the id the generator engine (vLLM) gets. Ids are unique among the calls in flight: when a caller sends
an id that a call still running already has, the new call's id gets a suffix `.2`, `.3`, ... (so a grep
for the caller's id still finds it). Keys never reach the log; request bodies only with `log_payloads`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

import grpc
import structlog
from google.protobuf import text_format
from google.protobuf.message import Message

from rag_grpc.api.call_context import begin_call, current_caller
from rag_grpc.api.interceptors.base import (
    AroundCallInterceptor,
    Behavior,
    ObservedWrites,
    RpcMethod,
    final_code,
)
from rag_grpc.v1 import rag_pb2 as pb

log = structlog.get_logger("rag_grpc.rpc")

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
MAX_LOGGED_PAYLOAD_CHARS = 4096
_SERVER_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and _sane(value):
            return str(value)
    return uuid.uuid4().hex


def _sane(value: object) -> bool:
    """1..128 printable ASCII characters without spaces: safe to log, to echo and to hand to engines."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_REQUEST_ID_CHARS
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _usage(message: Any) -> dict[str, Any]:
    """What a response tells the log line: Embed's token total; Generate's usage, model and route."""
    if isinstance(message, pb.EmbedResponse):
        return {"embedded_tokens": message.total_tokens}
    if isinstance(message, pb.GenerateResponse) and message.HasField("final"):
        final = message.final
        usage = final.usage
        fields: dict[str, Any] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "model": final.model,
        }
        if final.route:
            fields["route"] = final.route
        return fields
    return {}


class RequestLogInterceptor(AroundCallInterceptor):
    def __init__(self, log_payloads: bool = False) -> None:
        self._log_payloads = log_payloads
        self._in_flight: set[str] = set()

    def _unique(self, request_id: str) -> str:
        candidate, n = request_id, 1
        while candidate in self._in_flight:
            n += 1
            candidate = f"{request_id}.{n}"
        self._in_flight.add(candidate)
        return candidate

    async def _begin(self, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod) -> str:
        request_id = self._unique(_request_id(context.invocation_metadata()))
        begin_call(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        echo = ((REQUEST_ID_KEY, request_id),)
        # status.abort keeps trailing metadata set before it, so refusals carry the id too.
        context.set_trailing_metadata(echo)
        if method.response_streaming:
            await context.send_initial_metadata(echo)
        return request_id

    def _log(
        self,
        method: RpcMethod,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        started: float,
        exc: BaseException | None,
        last_message: Any,
        messages_sent: int | None = None,
    ) -> None:
        code = final_code(exc, context)
        fields: dict[str, Any] = {
            "method": str(method),
            "peer": context.peer(),
            "caller": current_caller().name,
            "code": code.name,
            "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }
        if code != grpc.StatusCode.OK:
            fields["details"] = context.details() or ""
        if messages_sent is not None:
            fields["messages_sent"] = messages_sent
        fields.update(_usage(last_message))
        if self._log_payloads and isinstance(request, Message):
            fields["request"] = text_format.MessageToString(request, as_one_line=True)[
                :MAX_LOGGED_PAYLOAD_CHARS
            ]
        if code in _SERVER_ERRORS:
            log.error("rpc", **fields)
        else:
            log.info("rpc", **fields)

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        started = time.perf_counter()
        request_id = await self._begin(context, method)
        try:
            return await self._logged_call(behavior, request, context, method, started)
        finally:
            self._in_flight.discard(request_id)

    async def _logged_call(
        self,
        behavior: Behavior,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method: RpcMethod,
        started: float,
    ) -> Any:
        if not method.response_streaming:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._log(method, request, context, started, exc, None)
                raise
            self._log(method, request, context, started, None, response)
            return response
        # A streaming handler that writes with context.write: watch its writes for the count and the usage.
        written: list[Any] = [None, 0]  # last message, messages sent

        def sent(message: Any) -> None:
            written[0] = message
            written[1] += 1

        try:
            # ObservedWrites stands in for the context: it delegates everything but write().
            observed = cast("grpc.aio.ServicerContext[Any, Any]", ObservedWrites(context, sent))
            response = await behavior(request, observed)
        except BaseException as exc:
            self._log(method, request, context, started, exc, written[0], written[1])
            raise
        self._log(method, request, context, started, None, written[0], written[1])
        return response

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        started = time.perf_counter()
        request_id = await self._begin(context, method)
        last, sent = None, 0
        try:
            async with aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    last = message
                    yield message
                    sent += 1
        except BaseException as exc:
            self._log(method, request, context, started, exc, last, sent)
            raise
        finally:
            self._in_flight.discard(request_id)
        self._log(method, request, context, started, None, last, sent)
