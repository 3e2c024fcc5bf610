"""Turns exceptions escaping a handler into gRPC statuses, through the one map in api/status.py.

It sits innermost in the chain so that the interceptors outside it see final status codes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
import structlog

from rag_grpc.api import status
from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior, RpcMethod, call_gone

log = structlog.get_logger(__name__)


class ErrorMappingInterceptor(AroundCallInterceptor):
    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(exc, context, method)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        try:
            async with aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    yield message
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(exc, context, method)

    @staticmethod
    async def _abort(exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str) -> NoReturn:
        if call_gone(exc):
            # The client left while we wrote: there is nobody to send a status to, and nothing to report.
            raise exc
        if status.status_for(exc).code == grpc.StatusCode.INTERNAL:
            log.error("unhandled_error", method=method, exc_info=exc)
        await status.abort(context, exc)
