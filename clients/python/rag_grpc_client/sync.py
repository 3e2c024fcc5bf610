"""The blocking client: the same calls, options and errors as AsyncClient, on a sync gRPC channel.

with Client("127.0.0.1:50051") as client:
    print(client.answer("Which planet has the tallest volcano?", retrieval=Retrieval(top_k=2)).text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2

from rag_grpc_client import _convert as c
from rag_grpc_client import types as t
from rag_grpc_client._pb import rag_pb2 as pb
from rag_grpc_client._retry import Attempts
from rag_grpc_client.aio import DocumentLike, ProgressCallback, _options
from rag_grpc_client.config import TLS, ClientOptions, channel_options, credentials, target_uri
from rag_grpc_client.errors import NotFound, error_from_rpc


class Client:
    """Blocking twin of AsyncClient; safe to share between threads."""

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
            self._channel = grpc.insecure_channel(uri, options=args)
        else:
            self._channel = grpc.secure_channel(uri, credentials(self.options.tls), options=args)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, call: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        attempts = Attempts(self.options.retries, timeout)
        while True:
            try:
                return call(request, timeout=attempts.timeout(), metadata=self._metadata)
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                delay = attempts.wait_before_retry(error)
                if delay is None:
                    raise error from None
            time.sleep(delay)

    def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> t.Embeddings:
        request = pb.EmbedRequest(texts=list(texts))
        return c.embeddings(self._unary(self._embed, request, timeout or self.options.deadlines.embed))

    def retrieve(
        self,
        query: str | Sequence[float],
        *,
        top_k: int | None = None,
        filter: Mapping[str, str] | None = None,
        min_score: float | None = None,
        timeout: float | None = None,
    ) -> t.Hits:
        request = c.retrieve_request(query, top_k, filter, min_score)
        return c.hits(self._unary(self._retrieve, request, timeout or self.options.deadlines.retrieve))

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
    ) -> Iterator[t.GenerateEvent]:
        """The events of one Generate call; closing the iterator early cancels the generation."""
        sampling: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        sampling.update(top_k=top_k, stop=stop, seed=seed, min_tokens=min_tokens)
        request = c.generate_request(prompt, messages, retrieval, model, sampling)
        attempts = Attempts(self.options.retries, timeout or self.options.deadlines.generate)
        started = False
        while True:
            call = self._generate(request, timeout=attempts.timeout(), metadata=self._metadata)
            try:
                for message in call:
                    started = True
                    yield c.event(message)
                return
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                delay = None if started else attempts.wait_before_retry(error)
                if delay is None:
                    raise error from None
            finally:
                call.cancel()
            time.sleep(delay)

    def answer(self, prompt: str | None = None, **kwargs: Any) -> t.Answer:
        builder = c.AnswerBuilder()
        for item in self.generate(prompt, **kwargs):
            builder.add(item)
        return builder.answer()

    def upsert(self, documents: Iterable[DocumentLike], *, timeout: float | None = None) -> t.Written:
        request = pb.UpsertRequest(documents=[c.document(d) for d in documents])
        response = self._unary(self._upsert, request, timeout or self.options.deadlines.upsert)
        return t.Written(response.upserted, response.index_version)

    def delete(self, ids: Iterable[str], *, timeout: float | None = None) -> t.Written:
        request = pb.DeleteRequest(ids=list(ids))
        response = self._unary(self._delete, request, timeout or self.options.deadlines.delete)
        return t.Written(response.deleted, response.index_version)

    def ingest(
        self,
        documents: Iterable[DocumentLike],
        *,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.IngestResult:
        """As AsyncClient.ingest; `on_progress` runs on gRPC's thread that sends the batches."""
        batcher = c.Batcher(batch_size)
        failure: list[BaseException] = []

        def batches() -> Iterator[pb.IngestRequest | None]:
            for doc in documents:
                yield batcher.add(doc)
            yield batcher.flush()

        def requests() -> Iterator[pb.IngestRequest]:
            try:
                for request in batches():
                    if request is not None:
                        yield request
                        progress = batcher.sent(request)
                        if on_progress is not None:
                            on_progress(progress)
            except Exception as exc:
                failure.append(exc)  # gRPC cancels the call; the caller gets this exception instead
                raise

        try:
            response = self._ingest(
                requests(), timeout=timeout or self.options.deadlines.ingest, metadata=self._metadata
            )
        except grpc.RpcError as err:
            if failure:
                raise failure[0] from None
            raise error_from_rpc(err) from None
        return t.IngestResult(response.documents, response.batches, response.index_version)

    def info(self, *, timeout: float | None = None) -> t.Info:
        return c.info(self._unary(self._info, pb.InfoRequest(), timeout or self.options.deadlines.info))

    def health(self, service: str = "", *, timeout: float | None = None) -> t.HealthStatus:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._unary(self._health, request, timeout or self.options.deadlines.health)
        except NotFound:
            return "SERVICE_UNKNOWN"
        return c.health_status(response)
