"""What the client takes and returns: plain frozen dataclasses, so callers never handle protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "unspecified"]
HealthStatus = Literal["SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN"]


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Embedding:
    values: tuple[float, ...]
    token_count: int
    cached: bool


@dataclass(frozen=True, slots=True)
class Embeddings:
    embeddings: list[Embedding]
    model: str
    dimension: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class Hits:
    """A Retrieve answer, best hit first."""

    hits: list[Hit]
    index_version: int
    cached: bool


@dataclass(frozen=True, slots=True)
class Retrieval:
    """Grounds a Generate on retrieved documents; None fields mean the server's defaults."""

    top_k: int | None = None
    filter: Mapping[str, str] = field(default_factory=dict)
    min_score: float | None = None


# ---- Generate events, in stream order: Sources (only with retrieval), TextDelta..., one Final.


@dataclass(frozen=True, slots=True)
class Sources:
    hits: list[Hit]
    index_version: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Timings:
    retrieval_ms: float
    time_to_first_token_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Final:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    request_id: str
    model: str
    cached: bool
    # Why the server's router chose `model` when the request asked for "auto"; empty otherwise.
    route: str = ""


GenerateEvent = Sources | TextDelta | Final


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole Generate stream, collected."""

    text: str
    sources: list[Hit]
    final: Final


# ---- Documents


@dataclass(frozen=True, slots=True)
class Written:
    """Upsert and Delete: how many documents, and the index version the write produced."""

    count: int
    index_version: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    documents: int
    batches: int
    index_version: int


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Sent so far (handed to gRPC, which applies the server's flow control) in one Ingest call."""

    documents: int
    batches: int
    bytes: int


# ---- Info


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    model: str
    dimension: int
    max_input_tokens: int
    device: str
    backend: str


@dataclass(frozen=True, slots=True)
class GeneratorInfo:
    model: str
    device: str
    backend: str


@dataclass(frozen=True, slots=True)
class IndexInfo:
    backend: str
    device: str
    size: int
    version: int
    dimension: int


@dataclass(frozen=True, slots=True)
class Info:
    version: str
    embedder: EmbedderInfo
    generators: list[GeneratorInfo]
    index: IndexInfo
    # Request limits by their proto field names (max_batch_texts, max_top_k, max_tokens, ...).
    limits: dict[str, int]
