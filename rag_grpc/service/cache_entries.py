"""What the result cache stores: the key of each kind of result and its byte encoding.

Keys hash everything the result depends on. Retrieval results (and grounded answers) depend on
the index, so their keys carry the index version, which every write increases, and an identity
of this process's index, because versions restart with the process and differ between replicas
that share a Redis. Values are compact bytes or JSON, never pickles.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rag_grpc.domain import (
    ChatMessage,
    DeltaEvent,
    FinishReason,
    Hit,
    RetrievalOptions,
    SamplingOptions,
    SearchResult,
    SourcesEvent,
)

_TOKEN_COUNT = struct.Struct("<I")


def _digest(*parts: object) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IndexState:
    """Which index, at which version, a result was computed from."""

    identity: str
    version: int


# --- embeddings


def embedding_key(model: str, text: str) -> str:
    return f"{model}:{hashlib.sha256(text.encode()).hexdigest()}"


def encode_embedding(vector: np.ndarray, token_count: int) -> bytes:
    return _TOKEN_COUNT.pack(token_count) + np.asarray(vector, dtype="<f4").tobytes()


def decode_embedding(value: bytes) -> tuple[np.ndarray, int]:
    (token_count,) = _TOKEN_COUNT.unpack_from(value)
    return np.frombuffer(value, dtype="<f4", offset=_TOKEN_COUNT.size).astype(np.float32), token_count


# --- retrieval results


def text_query(embedder_model: str, text: str) -> str:
    return f"text:{embedder_model}:{hashlib.sha256(text.encode()).hexdigest()}"


def vector_query(vector: np.ndarray) -> str:
    """The query vector as searched (already normalized), so equal vectors share an entry."""
    return f"vector:{hashlib.sha256(np.asarray(vector, dtype='<f4').tobytes()).hexdigest()}"


def retrieval_key(
    index: IndexState, query: str, top_k: int, filter_: Mapping[str, str], min_score: float | None
) -> str:
    return _digest(index.identity, index.version, query, top_k, sorted(filter_.items()), min_score)


def _hits_json(hits: Sequence[Hit]) -> list[list[object]]:
    return [[h.id, h.score, h.text, dict(h.metadata)] for h in hits]


def _hits(rows: list[list[object]]) -> list[Hit]:
    return [Hit(id=i, score=s, text=t, metadata=m) for i, s, t, m in rows]  # type: ignore[arg-type]


def encode_search_result(result: SearchResult) -> bytes:
    return json.dumps({"version": result.index_version, "hits": _hits_json(result.hits)}).encode()


def decode_search_result(value: bytes) -> SearchResult:
    data = json.loads(value)
    return SearchResult(hits=_hits(data["hits"]), index_version=data["version"], cached=True)


# --- Generate answers


def is_deterministic(sampling: SamplingOptions) -> bool:
    """Greedy decoding, or sampling with a fixed seed: the same request yields the same answer."""
    return sampling.temperature == 0.0 or sampling.seed is not None


def generation_key(
    model: str,
    messages: Sequence[ChatMessage],
    sampling: SamplingOptions,
    retrieval: RetrievalOptions | None,
    index: IndexState | None,
) -> str:
    """`index` is the state retrieval ran against; None for answers that are not grounded."""
    return _digest(
        model,
        [[m.role, m.content] for m in messages],
        [
            sampling.max_tokens,
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
            list(sampling.stop),
            sampling.seed,
            sampling.min_tokens,
        ],
        None
        if retrieval is None
        else [retrieval.top_k, sorted(retrieval.filter.items()), retrieval.min_score],
        None if index is None else [index.identity, index.version],
    )


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A finished Generate stream, less what differs on every run (request id, timings)."""

    sources: SourcesEvent | None
    deltas: list[DeltaEvent]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model: str
    route: str = ""


def encode_answer(answer: CachedAnswer) -> bytes:
    sources = answer.sources
    return json.dumps(
        {
            "sources": None
            if sources is None
            else {"version": sources.index_version, "hits": _hits_json(sources.hits)},
            "deltas": [[d.text, d.token_count] for d in answer.deltas],
            "finish_reason": answer.finish_reason.value,
            "usage": [answer.prompt_tokens, answer.completion_tokens],
            "model": answer.model,
            "route": answer.route,
        }
    ).encode()


def decode_answer(value: bytes) -> CachedAnswer:
    data = json.loads(value)
    sources = data["sources"]
    prompt_tokens, completion_tokens = data["usage"]
    return CachedAnswer(
        sources=None
        if sources is None
        else SourcesEvent(hits=_hits(sources["hits"]), index_version=sources["version"]),
        deltas=[DeltaEvent(text=text, token_count=count) for text, count in data["deltas"]],
        finish_reason=FinishReason(data["finish_reason"]),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=data["model"],
        # Absent from entries written before routing existed.
        route=data.get("route", ""),
    )
