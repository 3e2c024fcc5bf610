"""Graceful drain: counts the API calls in flight and, once draining, turns new ones away with
UNAVAILABLE (go to another replica) while the calls already running finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from rag_grpc.api.interceptors.base import AroundCallInterceptor, Behavior
from rag_grpc.errors import Unavailable


class DrainInterceptor(AroundCallInterceptor):
    def __init__(self) -> None:
        self._in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def applies_to(self, method: str) -> bool:
        return method.startswith("/rag_grpc.")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start_draining(self) -> None:
        self._draining = True

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        if self._draining:
            raise Unavailable("server is shutting down; retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def around_call(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> Any:
        with self._tracked():
            return await behavior(request, context)

    async def around_stream(
        self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> AsyncGenerator[Any, None]:
        with self._tracked():
            async for message in behavior(request, context):
                yield message
