"""Turns exceptions escaping a handler into gRPC statuses, through the one map in api/status.py.

It sits innermost in the chain so that the interceptors outside it see final status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import structlog

from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior
from rag_grpc.api.status import status_for

log = structlog.get_logger(__name__)


class ErrorMappingInterceptor(AroundCallInterceptor):
    async def around_call(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: str) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(exc, context, method)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext, method: str
    ) -> AsyncIterator[Any]:
        try:
            async for message in behavior(request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(exc, context, method)

    @staticmethod
    async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> NoReturn:
        status = status_for(exc)
        if status.code == grpc.StatusCode.INTERNAL:
            log.error("unhandled_error", method=method, exc_info=exc)
        if status.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, round(status.retry_after_s)))),))
        await context.abort(status.code, status.message)
