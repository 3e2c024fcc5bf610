"""Thin servicers: protobuf in, one RagService call, protobuf out. Errors are mapped by
ErrorMappingInterceptor, so no handler catches domain exceptions itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from rag_grpc import __version__
from rag_grpc.api import converters
from rag_grpc.domain import Document
from rag_grpc.service import RagService
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext


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

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> AsyncIterator[pb.GenerateResponse]:
        # aclosing: when the client goes away, the engine request is aborted now, not at garbage collection.
        async with aclosing(self._service.generate(converters.generate_input(request))) as events:
            async for event in events:
                yield converters.generate_response(event)


class DocumentServicer(pb_grpc.DocumentServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Upsert(self, request: pb.UpsertRequest, context: Context) -> pb.UpsertResponse:
        result = await self._service.upsert(converters.documents(request.documents))
        return pb.UpsertResponse(upserted=result.count, index_version=result.index_version)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        result = await self._service.delete(list(request.ids))
        return pb.DeleteResponse(deleted=result.count, index_version=result.index_version)

    async def Ingest(self, request_iterator: AsyncIterator[pb.IngestRequest], context: Context) -> pb.IngestResponse:
        async def batches() -> AsyncIterator[list[Document]]:
            async for request in request_iterator:
                yield converters.documents(request.documents)

        documents, count, version = await self._service.ingest(batches())
        return pb.IngestResponse(documents=documents, batches=count, index_version=version)


class InfoServicer(pb_grpc.InfoServiceServicer):
    def __init__(self, service: RagService) -> None:
        self._service = service

    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoResponse:
        engines, s = self._service.engines, self._service.settings
        embedder, store = engines.embedder, engines.vector_store
        return pb.InfoResponse(
            version=__version__,
            embedder=pb.EmbedderInfo(
                model=embedder.info.model,
                dimension=embedder.dimension,
                max_input_tokens=embedder.max_input_tokens,
                device=embedder.info.device,
                backend=embedder.info.backend,
            ),
            generators=[
                pb.GeneratorInfo(model=g.info.model, device=g.info.device, backend=g.info.backend)
                for g in engines.generators.values()
            ],
            index=pb.IndexInfo(
                backend=store.info.backend,
                device=store.info.device,
                size=store.size,
                version=store.version,
                dimension=store.dimension,
            ),
            limits=pb.Limits(
                max_batch_texts=s.max_batch_texts,
                max_text_chars=s.max_text_chars,
                max_top_k=s.max_top_k,
                max_tokens=s.max_tokens,
                max_stop_sequences=s.max_stop_sequences,
                max_prompt_chars=s.max_prompt_chars,
                max_metadata_entries=s.max_metadata_entries,
            ),
        )
