"""Thin servicers: protobuf in, one RagService call, protobuf out. Errors are mapped by
ErrorMappingInterceptor, so no handler catches domain exceptions itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rag_grpc.api import converters
from rag_grpc.api.call_context import current_call
from rag_grpc.domain import Document, RequestContext
from rag_grpc.errors import ResourceExhausted
from rag_grpc.service import RagService
from rag_grpc.service.streaming import CoalescingLimits, CoalescingStream
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def request_context(context: Context | None = None) -> RequestContext:
    """The call's id and caller, as the request-log and auth interceptors recorded them, and its deadline."""
    remaining = context.time_remaining() if context is not None else None
    deadline = None if remaining is None else time.monotonic() + remaining
    call = current_call()
    if call is None or not call.request_id:  # a server built without the request-log interceptor
        return RequestContext(uuid.uuid4().hex, deadline=deadline)
    return RequestContext(call.request_id, call.caller.name, deadline)


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        return converters.embed_response(await self._service.embed(list(request.texts)))


class RetrieveServicer(pb_grpc.RetrieveServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Retrieve(self, request: pb.RetrieveRequest, context: Context) -> pb.RetrieveResponse:
        result = await self._service.retrieve(converters.retrieve_input(request))
        return converters.retrieve_response(result)


class GenerateServicer(pb_grpc.GenerateServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service
        limits = service.settings.limits
        self._limits = CoalescingLimits(
            max_buffered_events=limits.stream_buffer_events,
            max_tokens_per_message=limits.stream_max_tokens_per_message,
        )
        self._stall_timeout_s = limits.stream_stall_timeout_s

    # A coroutine that writes, rather than an async generator that yields: only then can a write that
    # the client does not accept be noticed, and the generation behind it aborted.
    async def Generate(  # type: ignore[override]  # writes with context.write instead of returning an iterator
        self, request: pb.GenerateRequest, context: Context
    ) -> None:
        events = self._service.generate(converters.generate_input(request), request_context(context))
        async with CoalescingStream(events, self._limits) as stream:
            async for event in stream:
                await self._write(context, converters.generate_response(event), stream)

    async def _write(self, context: Context, message: pb.GenerateResponse, stream: CoalescingStream) -> None:
        write = asyncio.ensure_future(context.write(message))
        try:
            await asyncio.wait_for(asyncio.shield(write), self._stall_timeout_s)
        except TimeoutError:
            # The client stopped reading. Free the engine now; the status can only be sent once the pending
            # write completes (a client that never reads again is ended by its deadline or the server's).
            await stream.aclose()
            await write
            raise ResourceExhausted(
                f"client read nothing for {self._stall_timeout_s:g} s; generation aborted"
            ) from None
        except asyncio.CancelledError:
            write.cancel()
            raise


class DocumentServicer(pb_grpc.DocumentServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Upsert(self, request: pb.UpsertRequest, context: Context) -> pb.UpsertResponse:
        result = await self._service.upsert(converters.documents(request.documents))
        return pb.UpsertResponse(upserted=result.count, index_version=result.index_version)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        result = await self._service.delete(list(request.ids))
        return pb.DeleteResponse(deleted=result.count, index_version=result.index_version)

    async def Ingest(
        self, request_iterator: AsyncIterator[pb.IngestRequest], context: Context
    ) -> pb.IngestResponse:
        async def batches() -> AsyncIterator[list[Document]]:
            async for request in request_iterator:
                yield converters.documents(request.documents)

        result = await self._service.ingest(batches())
        return pb.IngestResponse(
            documents=result.documents, batches=result.batches, index_version=result.index_version
        )


class InfoServicer(pb_grpc.InfoServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoResponse:
        return converters.info_response(self._service.info())


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Snapshot(self, request: pb.SnapshotRequest, context: Context) -> pb.SnapshotResponse:
        info = await self._service.snapshot()
        return pb.SnapshotResponse(
            index_version=info.index_version,
            documents=info.documents,
            bytes=info.bytes,
            duration_ms=info.duration_ms,
            written=info.written,
        )
