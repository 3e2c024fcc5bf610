"""The asyncio client.

async with AsyncClient("127.0.0.1:50051") as client:
    async for event in client.generate("Which planet has the tallest volcano?", retrieval=Retrieval(top_k=2)):
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, cast

import grpc
from grpc_health.v1 import health_pb2

from rag_grpc_client import _convert as c
from rag_grpc_client import types as t
from rag_grpc_client._pb import rag_pb2 as pb
from rag_grpc_client._retry import Attempts
from rag_grpc_client.config import TLS, ClientOptions, channel_options, credentials, target_uri
from rag_grpc_client.errors import NotFound, error_from_rpc

DocumentLike = t.Document | Mapping[str, Any]
ProgressCallback = Callable[[t.IngestProgress], None]


def _options(options: ClientOptions | None, api_key: str | None, tls: TLS | None) -> ClientOptions:
    base = options or ClientOptions()
    return ClientOptions(
        api_key=api_key if api_key is not None else base.api_key,
        tls=tls if tls is not None else base.tls,
        deadlines=base.deadlines,
        retries=base.retries,
        health_check_service=base.health_check_service,
        reconnect_backoff_s=base.reconnect_backoff_s,
        channel_options=base.channel_options,
    )


class GenerateStream:
    """The events of one Generate call, as an async iterator: Sources (with retrieval), TextDelta...,
    Final. Leaving an `async with` block, or `cancel()`, cancels the generation on the server."""

    def __init__(
        self, start: Callable[[float | None], grpc.aio.UnaryStreamCall[Any, Any]], attempts: Attempts
    ) -> None:
        self._start = start
        self._attempts = attempts
        self._call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
        self._started = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> t.GenerateEvent:
        while True:
            if self._call is None:
                self._call = self._start(self._attempts.timeout())
            try:
                message = await self._call.read()
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                # RESOURCE_EXHAUSTED comes before any event, when the call did nothing yet.
                delay = None if self._started else self._attempts.wait_before_retry(error)
                if delay is None:
                    raise error from None
                self._call = None
                await asyncio.sleep(delay)
                continue
            if message is grpc.aio.EOF:
                raise StopAsyncIteration
            self._started = True
            return c.event(cast("pb.GenerateResponse", message))

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cancel()


async def _documents(documents: Iterable[DocumentLike] | AsyncIterable[DocumentLike]) -> Any:
    if isinstance(documents, AsyncIterable):
        async for doc in documents:
            yield doc
    else:
        for doc in documents:
            yield doc


def _report(batcher: c.Batcher, request: pb.IngestRequest, on_progress: ProgressCallback | None) -> None:
    progress = batcher.sent(request)
    if on_progress is not None:
        on_progress(progress)


class AsyncClient:
    """A channel to one service (one address, a DNS name, or a list of addresses balanced round_robin)
    with typed calls. See ClientOptions for deadlines, retries, the API key and TLS."""

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: TLS | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self.options = _options(options, api_key, tls)
        uri, args = target_uri(target), channel_options(self.options)
        if self.options.tls is None:
            self._channel = grpc.aio.insecure_channel(uri, options=args)
        else:
            self._channel = grpc.aio.secure_channel(uri, credentials(self.options.tls), options=args)
        self._metadata = self.options.metadata()
        ch, ser = self._channel, c.serialize
        self._embed = ch.unary_unary(c.EMBED, ser, pb.EmbedResponse.FromString)
        self._retrieve = ch.unary_unary(c.RETRIEVE, ser, pb.RetrieveResponse.FromString)
        self._generate = ch.unary_stream(c.GENERATE, ser, pb.GenerateResponse.FromString)
        self._upsert = ch.unary_unary(c.UPSERT, ser, pb.UpsertResponse.FromString)
        self._delete = ch.unary_unary(c.DELETE, ser, pb.DeleteResponse.FromString)
        self._ingest = ch.stream_unary(c.INGEST, ser, pb.IngestResponse.FromString)
        self._info = ch.unary_unary(c.INFO, ser, pb.InfoResponse.FromString)
        self._health = ch.unary_unary(c.HEALTH_CHECK, ser, health_pb2.HealthCheckResponse.FromString)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(
        self,
        call: Callable[..., Awaitable[Any]],
        request: Any,
        timeout: float | None,
    ) -> Any:
        attempts = Attempts(self.options.retries, timeout)
        while True:
            try:
                return await call(request, timeout=attempts.timeout(), metadata=self._metadata)
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                delay = attempts.wait_before_retry(error)
                if delay is None:
                    raise error from None
            await asyncio.sleep(delay)

    async def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> t.Embeddings:
        request = pb.EmbedRequest(texts=list(texts))
        response = await self._unary(self._embed, request, timeout or self.options.deadlines.embed)
        return c.embeddings(response)

    async def retrieve(
        self,
        query: str | Sequence[float],
        *,
        top_k: int | None = None,
        filter: Mapping[str, str] | None = None,
        min_score: float | None = None,
        timeout: float | None = None,
    ) -> t.Hits:
        request = c.retrieve_request(query, top_k, filter, min_score)
        return c.hits(await self._unary(self._retrieve, request, timeout or self.options.deadlines.retrieve))

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[t.ChatMessage] | None = None,
        retrieval: t.Retrieval | None = None,
        model: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        min_tokens: int | None = None,
        timeout: float | None = None,
    ) -> GenerateStream:
        """Streams an answer to `prompt` (or the chat `messages`), grounded on retrieved documents when
        `retrieval` is given."""
        sampling: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        sampling.update(top_k=top_k, stop=stop, seed=seed, min_tokens=min_tokens)
        request = c.generate_request(prompt, messages, retrieval, model, sampling)
        attempts = Attempts(self.options.retries, timeout or self.options.deadlines.generate)
        return GenerateStream(
            lambda left: self._generate(request, timeout=left, metadata=self._metadata), attempts
        )

    async def answer(self, prompt: str | None = None, **kwargs: Any) -> t.Answer:
        """`generate` collected: the whole text, the sources and the Final message."""
        builder = c.AnswerBuilder()
        async with self.generate(prompt, **kwargs) as stream:
            async for item in stream:
                builder.add(item)
        return builder.answer()

    async def upsert(self, documents: Iterable[DocumentLike], *, timeout: float | None = None) -> t.Written:
        request = pb.UpsertRequest(documents=[c.document(d) for d in documents])
        response = await self._unary(self._upsert, request, timeout or self.options.deadlines.upsert)
        return t.Written(response.upserted, response.index_version)

    async def delete(self, ids: Iterable[str], *, timeout: float | None = None) -> t.Written:
        request = pb.DeleteRequest(ids=list(ids))
        response = await self._unary(self._delete, request, timeout or self.options.deadlines.delete)
        return t.Written(response.deleted, response.index_version)

    async def ingest(
        self,
        documents: Iterable[DocumentLike] | AsyncIterable[DocumentLike],
        *,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.IngestResult:
        """Streams `documents` in batches of `batch_size`, one Ingest call; the server stores each batch
        as it arrives. An exception from `documents` cancels the call and is raised as it is (batches sent
        before it may be stored). `on_progress` is called after each batch is sent."""
        batcher = c.Batcher(batch_size)
        failure: list[BaseException] = []

        async def requests() -> AsyncIterator[pb.IngestRequest]:
            # gRPC consumes this; an exception here only cancels the call, so it is kept for the caller.
            try:
                async for doc in _documents(documents):
                    if (request := batcher.add(doc)) is not None:
                        yield request
                        _report(batcher, request, on_progress)
                if (request := batcher.flush()) is not None:
                    yield request
                    _report(batcher, request, on_progress)
            except Exception as exc:
                failure.append(exc)
                raise

        # Writing from gRPC's own consumer of the iterator, not with call.write(): a server that refuses the
        # call early (authentication, rate limits) is then reported with its status, not a failed write's.
        call = self._ingest(
            requests(), timeout=timeout or self.options.deadlines.ingest, metadata=self._metadata
        )
        try:
            response = await call
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        except asyncio.CancelledError:
            if failure:
                raise failure[0] from None
            raise
        return t.IngestResult(response.documents, response.batches, response.index_version)

    async def info(self, *, timeout: float | None = None) -> t.Info:
        return c.info(await self._unary(self._info, pb.InfoRequest(), timeout or self.options.deadlines.info))

    async def health(self, service: str = "", *, timeout: float | None = None) -> t.HealthStatus:
        """The server's health ("" overall, or a service such as "rag_grpc.v1.GenerateService")."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await self._unary(self._health, request, timeout or self.options.deadlines.health)
        except NotFound:
            return "SERVICE_UNKNOWN"
        return c.health_status(response)
