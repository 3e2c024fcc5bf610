"""Protobuf <-> domain conversion. The only module besides the servicers that touches pb types."""

from __future__ import annotations

import dataclasses

from rag_grpc.domain import (
    ChatMessage,
    DeltaEvent,
    Document,
    EmbedResult,
    FinalEvent,
    FinishReason,
    GenerateEvent,
    GenerateInput,
    Hit,
    RetrievalInput,
    RetrieveInput,
    SamplingInput,
    SearchResult,
    ServiceInfo,
    SourcesEvent,
)
from rag_grpc.v1 import rag_pb2 as pb

_FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


def _optional(message: object, field: str) -> object | None:
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]


def embed_response(result: EmbedResult) -> pb.EmbedResponse:
    counts = result.batch.token_counts
    cached = result.cached or [False] * len(counts)
    return pb.EmbedResponse(
        embeddings=[
            pb.Embedding(values=row, token_count=count, cached=hit)
            for row, count, hit in zip(result.batch.vectors.tolist(), counts, cached, strict=True)
        ],
        model=result.model,
        dimension=result.dimension,
        total_tokens=sum(counts),
    )


def retrieve_input(request: pb.RetrieveRequest) -> RetrieveInput:
    query = request.WhichOneof("query")
    return RetrieveInput(
        text=request.text if query == "text" else None,
        vector=list(request.vector.values) if query == "vector" else None,
        top_k=_optional(request, "top_k"),  # type: ignore[arg-type]
        filter=dict(request.filter),
        min_score=_optional(request, "min_score"),  # type: ignore[arg-type]
    )


def hit(h: Hit) -> pb.Hit:
    return pb.Hit(id=h.id, score=h.score, text=h.text, metadata=dict(h.metadata))


def retrieve_response(result: SearchResult) -> pb.RetrieveResponse:
    return pb.RetrieveResponse(
        hits=[hit(h) for h in result.hits], index_version=result.index_version, cached=result.cached
    )


def documents(items: object) -> list[Document]:
    return [Document(id=d.id, text=d.text, metadata=dict(d.metadata)) for d in items]  # type: ignore[attr-defined]


def generate_input(request: pb.GenerateRequest) -> GenerateInput:
    s = request.sampling
    retrieval = None
    if request.HasField("retrieval"):
        r = request.retrieval
        retrieval = RetrievalInput(
            top_k=_optional(r, "top_k"),  # type: ignore[arg-type]
            filter=dict(r.filter),
            min_score=_optional(r, "min_score"),  # type: ignore[arg-type]
        )
    return GenerateInput(
        prompt=request.prompt,
        messages=[ChatMessage(role=m.role, content=m.content) for m in request.messages],
        sampling=SamplingInput(
            max_tokens=_optional(s, "max_tokens"),  # type: ignore[arg-type]
            temperature=_optional(s, "temperature"),  # type: ignore[arg-type]
            top_p=_optional(s, "top_p"),  # type: ignore[arg-type]
            top_k=_optional(s, "top_k"),  # type: ignore[arg-type]
            stop=tuple(s.stop),
            seed=_optional(s, "seed"),  # type: ignore[arg-type]
            min_tokens=_optional(s, "min_tokens"),  # type: ignore[arg-type]
        ),
        retrieval=retrieval,
        model=request.model,
    )


def generate_response(event: GenerateEvent) -> pb.GenerateResponse:
    if isinstance(event, DeltaEvent):
        return pb.GenerateResponse(delta=pb.TextDelta(text=event.text, token_count=event.token_count))
    if isinstance(event, SourcesEvent):
        return pb.GenerateResponse(
            sources=pb.Sources(hits=[hit(h) for h in event.hits], index_version=event.index_version)
        )
    assert isinstance(event, FinalEvent)
    return pb.GenerateResponse(
        final=pb.Final(
            finish_reason=_FINISH_REASONS[event.finish_reason],
            usage=pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens),
            timings=pb.Timings(
                retrieval_ms=event.retrieval_ms,
                time_to_first_token_ms=event.time_to_first_token_ms,
                total_ms=event.total_ms,
            ),
            request_id=event.request_id,
            model=event.model,
            cached=event.cached,
            route=event.route,
        )
    )


def info_response(info: ServiceInfo) -> pb.InfoResponse:
    embedder, index, limits = info.embedder, info.index, info.limits
    return pb.InfoResponse(
        version=info.version,
        embedder=pb.EmbedderInfo(
            model=embedder.info.model,
            dimension=embedder.dimension,
            max_input_tokens=embedder.max_input_tokens,
            device=embedder.info.device,
            backend=embedder.info.backend,
        ),
        generators=[
            pb.GeneratorInfo(
                model=g.model,
                device=g.device,
                backend=g.backend,
                endpoints=[
                    pb.GeneratorEndpoint(
                        url=e.url, healthy=e.healthy, in_flight=e.in_flight, problem=e.problem
                    )
                    for e in g.endpoints
                ],
            )
            for g in info.generators
        ],
        index=pb.IndexInfo(
            backend=index.info.backend,
            device=index.info.device,
            size=index.size,
            version=index.version,
            dimension=index.dimension,
        ),
        # RequestLimits mirrors pb.Limits field by field.
        limits=pb.Limits(**dataclasses.asdict(limits)),
    )
