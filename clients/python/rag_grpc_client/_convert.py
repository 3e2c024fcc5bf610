"""Requests from the client's arguments and the client's types from responses (shared by both clients)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from rag_grpc_client import types as t
from rag_grpc_client._pb import rag_pb2 as pb

_FINISH: dict[int, t.FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


def _service(name: str) -> str:
    return pb.DESCRIPTOR.services_by_name[name].full_name


# Method paths from the proto's descriptors, so they cannot drift from it.
EMBED = f"/{_service('EmbedService')}/Embed"
RETRIEVE = f"/{_service('RetrieveService')}/Retrieve"
GENERATE = f"/{_service('GenerateService')}/Generate"
UPSERT = f"/{_service('DocumentService')}/Upsert"
DELETE = f"/{_service('DocumentService')}/Delete"
INGEST = f"/{_service('DocumentService')}/Ingest"
INFO = f"/{_service('InfoService')}/Info"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def document(doc: t.Document | Mapping[str, Any]) -> pb.Document:
    if isinstance(doc, t.Document):
        return pb.Document(id=doc.id, text=doc.text, metadata=dict(doc.metadata))
    return pb.Document(id=doc["id"], text=doc["text"], metadata=dict(doc.get("metadata") or {}))


def retrieve_request(
    query: str | Sequence[float],
    top_k: int | None,
    filter: Mapping[str, str] | None,
    min_score: float | None,
) -> pb.RetrieveRequest:
    request = pb.RetrieveRequest(top_k=top_k, filter=dict(filter or {}), min_score=min_score)
    if isinstance(query, str):
        request.text = query
    else:
        request.vector.values.extend(query)
    return request


def generate_request(
    prompt: str | None,
    messages: Iterable[t.ChatMessage] | None,
    retrieval: t.Retrieval | None,
    model: str,
    sampling: Mapping[str, Any],
) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        prompt=prompt or "",
        messages=[pb.ChatMessage(role=m.role, content=m.content) for m in messages or ()],
        model=model,
    )
    request.sampling.CopyFrom(
        pb.SamplingParams(**{k: v for k, v in sampling.items() if v is not None and k != "stop"})
    )
    request.sampling.stop.extend(sampling.get("stop") or ())
    if retrieval is not None:
        request.retrieval.CopyFrom(
            pb.RetrievalOptions(
                top_k=retrieval.top_k, filter=dict(retrieval.filter), min_score=retrieval.min_score
            )
        )
    return request


def hit(message: pb.Hit) -> t.Hit:
    return t.Hit(message.id, message.score, message.text, dict(message.metadata))


def embeddings(response: pb.EmbedResponse) -> t.Embeddings:
    return t.Embeddings(
        [t.Embedding(tuple(e.values), e.token_count, e.cached) for e in response.embeddings],
        response.model,
        response.dimension,
        response.total_tokens,
    )


def hits(response: pb.RetrieveResponse) -> t.Hits:
    return t.Hits([hit(h) for h in response.hits], response.index_version, response.cached)


def event(message: pb.GenerateResponse) -> t.GenerateEvent:
    kind = message.WhichOneof("event")
    if kind == "sources":
        return t.Sources([hit(h) for h in message.sources.hits], message.sources.index_version)
    if kind == "delta":
        return t.TextDelta(message.delta.text, message.delta.token_count)
    final = message.final
    return t.Final(
        finish_reason=_FINISH.get(final.finish_reason, "unspecified"),
        usage=t.Usage(final.usage.prompt_tokens, final.usage.completion_tokens),
        timings=t.Timings(
            final.timings.retrieval_ms, final.timings.time_to_first_token_ms, final.timings.total_ms
        ),
        request_id=final.request_id,
        model=final.model,
        cached=final.cached,
        route=final.route,
    )


class AnswerBuilder:
    """Collects a Generate stream into an Answer."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sources: list[t.Hit] = []
        self.final: t.Final | None = None

    def add(self, item: t.GenerateEvent) -> None:
        if isinstance(item, t.Sources):
            self.sources = item.hits
        elif isinstance(item, t.TextDelta):
            self.parts.append(item.text)
        else:
            self.final = item

    def answer(self) -> t.Answer:
        if self.final is None:
            raise RuntimeError("the Generate stream ended without its Final message")
        return t.Answer("".join(self.parts), self.sources, self.final)


def info(response: pb.InfoResponse) -> t.Info:
    e, i = response.embedder, response.index
    return t.Info(
        version=response.version,
        embedder=t.EmbedderInfo(e.model, e.dimension, e.max_input_tokens, e.device, e.backend),
        generators=[t.GeneratorInfo(g.model, g.device, g.backend) for g in response.generators],
        index=t.IndexInfo(i.backend, i.device, i.size, i.version, i.dimension),
        limits={f.name: int(getattr(response.limits, f.name)) for f in response.limits.DESCRIPTOR.fields},
    )


def health_status(response: health_pb2.HealthCheckResponse) -> t.HealthStatus:
    return cast("t.HealthStatus", health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class Batcher:
    """Cuts documents into IngestRequests of `size` and counts what was sent."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("batch_size must be at least 1")
        self.size = size
        self.progress = t.IngestProgress(0, 0, 0)
        self._pending: list[pb.Document] = []

    def add(self, doc: t.Document | Mapping[str, Any]) -> pb.IngestRequest | None:
        self._pending.append(document(doc))
        return self.flush() if len(self._pending) >= self.size else None

    def flush(self) -> pb.IngestRequest | None:
        if not self._pending:
            return None
        request = pb.IngestRequest(documents=self._pending)
        self._pending = []
        return request

    def sent(self, request: pb.IngestRequest) -> t.IngestProgress:
        p = self.progress
        self.progress = t.IngestProgress(
            p.documents + len(request.documents), p.batches + 1, p.bytes + request.ByteSize()
        )
        return self.progress
