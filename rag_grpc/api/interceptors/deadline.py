"""Gives every call a deadline. Callers' own deadlines are enforced by gRPC itself (the handler is
cancelled, which aborts engine work); a call that sets none gets the server's ceiling, so no call
can hold an engine forever. Inside the error mapping, so DeadlineExceeded goes through the error map."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior
from rag_grpc.errors import DeadlineExceeded


class DeadlineCeilingInterceptor(AroundCallInterceptor):
    def __init__(self, ceiling_s: float) -> None:
        self._ceiling_s = ceiling_s

    def applies_to(self, method: str) -> bool:
        # Health Watch and reflection streams are meant to stay open.
        return method.startswith("/rag_grpc.")

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> Any:
        if context.time_remaining() is not None:
            return await behavior(request, context)
        async with asyncio.timeout(self._ceiling_s) as timeout:
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                if timeout.expired():
                    raise DeadlineExceeded(
                        f"call exceeded the server's {self._ceiling_s:g} s limit"
                    ) from None
                raise
