"""API-key authentication and per-method rights.

A call must carry exactly one `authorization: Bearer <key>` entry. Missing, several, malformed or
unknown -> UNAUTHENTICATED; a key whose role lacks the right for the method -> PERMISSION_DENIED. The
caller (key name and role, never the key) is recorded in call_context for handlers and the log line.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from typing import Any

import grpc

from rag_grpc.api import status
from rag_grpc.api.api_keys import KeyRing, is_token
from rag_grpc.api.call_context import Caller, Role, set_caller
from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior, RpcMethod
from rag_grpc.errors import PermissionDenied, RagError, Unauthenticated
from rag_grpc.metrics import GrpcMetrics

AUTHORIZATION_KEY = "authorization"
BEARER = "bearer "
# Services whose every method changes the index or the server's state.
WRITE_SERVICES = frozenset({"rag_grpc.v1.DocumentService", "rag_grpc.v1.AdminService"})


class _Refused(Exception):
    def __init__(self, reason: str, error: RagError) -> None:
        self.reason, self.error = reason, error


def _presented_key(metadata: Any) -> str:
    values = [value for key, value in metadata or () if key == AUTHORIZATION_KEY]
    if not values:
        raise _Refused("missing", Unauthenticated("missing 'authorization: Bearer <key>' metadata"))
    if len(values) > 1:
        raise _Refused("several", Unauthenticated("several authorization entries; send exactly one"))
    value = values[0]
    if (
        not isinstance(value, str)
        or value[: len(BEARER)].lower() != BEARER
        or not is_token(value[len(BEARER) :])
    ):
        raise _Refused("malformed", Unauthenticated("malformed authorization; expected 'Bearer <key>'"))
    return value[len(BEARER) :]


class AuthInterceptor(AroundCallInterceptor):
    def __init__(self, keys: KeyRing, metrics: GrpcMetrics, open_services: Collection[str] = ()) -> None:
        if not len(keys):
            raise ValueError(
                "AuthInterceptor needs at least one key; leave it out to switch authentication off"
            )
        self._keys = keys
        self._metrics = metrics
        self._open_services = frozenset(open_services)

    def applies_to(self, method: str) -> bool:
        return method.lstrip("/").partition("/")[0] not in self._open_services

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        caller = self._keys.caller_for(_presented_key(context.invocation_metadata()))
        if caller is None:
            raise _Refused("unknown_key", Unauthenticated("unknown API key"))
        return caller

    @staticmethod
    def _check_right(caller: Caller, method: RpcMethod) -> None:
        if method.service in WRITE_SERVICES and caller.role is not Role.READ_WRITE:
            raise _Refused(
                "permission",
                PermissionDenied(f"API key {caller.name!r} is {caller.role.value} and may not call {method}"),
            )

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod) -> None:
        try:
            caller = self._caller(context)
            # Recorded before the rights check, so a refused write is logged with who tried it.
            set_caller(caller)
            self._check_right(caller, method)
        except _Refused as refused:
            self._metrics.auth_failures.labels(refused.reason).inc()
            await status.abort(context, refused.error)

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> Any:
        await self._authenticate(context, method)
        return await behavior(request, context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: RpcMethod
    ) -> AsyncGenerator[Any, None]:
        await self._authenticate(context, method)
        async with aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message
