"""Transport-agnostic data the service and engines exchange. Protobuf never crosses this line.

One noun per concept per layer:
- `*Input`: a request as the caller sent it (API edge; None means the caller left a field unset);
- `*Options`: the same after validation, defaults applied (what the service works with);
- `Generation*`, `EmbeddingBatch`, `Search*`: what engines take and give;
- `*Event`, `*Result`: what the service answers (Generate streams events; the others return results).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Unit-length float32 vectors, one row per input text, and the tokens each text used."""

    vectors: FloatMatrix
    token_counts: list[int]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    vector: npt.NDArray[np.float32]
    top_k: int
    filter: Mapping[str, str] = field(default_factory=dict)
    min_score: float | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[Hit]
    index_version: int
    # True when served from the result cache rather than searched.
    cached: bool = False


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # End-of-sequence is suppressed until this many tokens were generated (stop strings still apply).
    min_tokens: int = 0


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a generator is asked to do. `messages` are rendered with the model's chat template."""

    request_id: str
    messages: list[ChatMessage]
    sampling: SamplingOptions
    # time.monotonic() by which the caller stops listening; remote workers get it as their own deadline.
    deadline: float | None = None


@dataclass(slots=True)
class GenerationChunk:
    """New text since the previous chunk; the last chunk of a request carries `finish_reason`."""

    text: str
    token_count: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StoreState:
    """Everything a vector store holds at one version: what a snapshot saves and a restart restores."""

    documents: list[Document]
    # One row per document, in the same order.
    vectors: FloatMatrix
    version: int


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    index_version: int
    documents: int
    bytes: int
    duration_ms: float
    # False when the newest snapshot already held this version, so nothing new was written.
    written: bool


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """A remote worker behind a generator, as its pool sees it now."""

    url: str
    healthy: bool
    in_flight: int
    # Why it last failed ("" when it never did); never carries credentials.
    problem: str


@dataclass(frozen=True, slots=True)
class EngineInfo:
    backend: str
    model: str
    device: str
    # The workers a remote generator spreads its requests over; empty for in-process engines.
    endpoints: tuple[EndpointInfo, ...] = ()


# --- service-level requests, mirroring the API; optional fields are None when the caller left them unset


@dataclass(frozen=True, slots=True)
class RetrieveInput:
    text: str | None
    vector: list[float] | None
    top_k: int | None
    filter: Mapping[str, str]
    min_score: float | None


@dataclass(frozen=True, slots=True)
class SamplingInput:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RetrievalInput:
    top_k: int | None
    filter: Mapping[str, str]
    min_score: float | None


@dataclass(frozen=True, slots=True)
class RetrievalOptions:
    """Validated retrieval options: defaults applied, limits checked."""

    top_k: int
    filter: Mapping[str, str]
    min_score: float | None


@dataclass(frozen=True, slots=True)
class GenerateInput:
    prompt: str
    messages: list[ChatMessage]
    sampling: SamplingInput
    retrieval: RetrievalInput | None
    model: str


# --- what Generate streams


@dataclass(frozen=True, slots=True)
class SourcesEvent:
    hits: list[Hit]
    index_version: int


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class FinalEvent:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    retrieval_ms: float
    time_to_first_token_ms: float
    total_ms: float
    request_id: str
    model: str
    # True when the answer was replayed from the cache; timings are then those of the replay.
    cached: bool = False
    # Why the router chose `model` for a request that asked for "auto"; empty when the request named it.
    route: str = ""


GenerateEvent = SourcesEvent | DeltaEvent | FinalEvent


@dataclass(frozen=True, slots=True)
class EmbedResult:
    batch: EmbeddingBatch
    model: str
    dimension: int
    # Per text: served from the embedding cache. Empty means none was.
    cached: Sequence[bool] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    count: int
    index_version: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    documents: int
    # Messages of the stream, each stored as one atomic write.
    batches: int
    index_version: int


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked, under which id: the id is the log's, the trailer's, Final.request_id and the engine's."""

    request_id: str
    caller: str = "anonymous"
    # time.monotonic() at which the caller's deadline passes; None when the caller set none.
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class EmbedderDescription:
    info: EngineInfo
    dimension: int
    max_input_tokens: int


@dataclass(frozen=True, slots=True)
class IndexDescription:
    info: EngineInfo
    size: int
    version: int
    dimension: int


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The request limits a caller must stay within (violations are INVALID_ARGUMENT)."""

    max_batch_texts: int
    max_text_chars: int
    max_top_k: int
    max_tokens: int
    max_stop_sequences: int
    max_prompt_chars: int
    max_metadata_entries: int


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What Info reports: the server's version, its engines and its request limits."""

    version: str
    embedder: EmbedderDescription
    generators: list[EngineInfo]
    index: IndexDescription
    limits: RequestLimits
