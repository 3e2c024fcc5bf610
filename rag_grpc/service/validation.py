"""Request validation. Field names in messages are the API's (`texts[2]`, `sampling.max_tokens`), so a
caller can find the offending field without reading server code. Validation never touches engines,
so a rejected request changes nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rag_grpc.domain import (
    ChatMessage,
    Document,
    GenerateInput,
    RetrievalInput,
    RetrievalOptions,
    RetrieveInput,
    SamplingOptions,
)
from rag_grpc.errors import InvalidArgument
from rag_grpc.settings import LimitSettings

CHAT_ROLES = frozenset({"system", "user", "assistant"})
# Temperatures below this decode greedily in all but name, and dividing float32 logits by them
# overflows to inf and NaN probabilities (1e-45 did, found by the fuzzer); they mean greedy, as in vLLM.
GREEDY_BELOW_TEMPERATURE = 1e-5


class Validator:
    def __init__(self, limits: LimitSettings) -> None:
        self._s = limits

    def text(self, field: str, text: str, limit: int | None = None) -> str:
        limit = limit or self._s.max_text_chars
        if not text or not text.strip():
            raise InvalidArgument(field, "must be a non-empty string")
        if len(text) > limit:
            raise InvalidArgument(field, f"is {len(text)} characters, over the limit of {limit}")
        return text

    def texts(self, field: str, texts: Sequence[str]) -> list[str]:
        if not texts:
            raise InvalidArgument(field, "must contain at least one text")
        if len(texts) > self._s.max_batch_texts:
            raise InvalidArgument(
                field, f"has {len(texts)} texts, over the limit of {self._s.max_batch_texts}"
            )
        return [self.text(f"{field}[{i}]", t) for i, t in enumerate(texts)]

    def metadata(self, field: str, metadata: Mapping[str, str]) -> dict[str, str]:
        if len(metadata) > self._s.max_metadata_entries:
            raise InvalidArgument(
                field, f"has {len(metadata)} entries, over the limit of {self._s.max_metadata_entries}"
            )
        limit = self._s.max_metadata_chars
        for key, value in metadata.items():
            if not key or not key.strip():
                raise InvalidArgument(field, "keys must be non-empty")
            if len(key) > limit or len(value) > limit:
                raise InvalidArgument(f"{field}[{key[:40]!r}]", f"key or value is over {limit} characters")
        return dict(metadata)

    def top_k(self, field: str, top_k: int | None) -> int:
        if top_k is None:
            return self._s.default_top_k
        if not 1 <= top_k <= self._s.max_top_k:
            raise InvalidArgument(field, f"must be between 1 and {self._s.max_top_k}, got {top_k}")
        return top_k

    @staticmethod
    def min_score(field: str, min_score: float | None) -> float | None:
        if min_score is not None and (math.isnan(min_score) or not -1.0 <= min_score <= 1.0):
            raise InvalidArgument(field, f"must be between -1 and 1, got {min_score}")
        return min_score

    def vector(self, field: str, values: Sequence[float], dimension: int) -> np.ndarray:
        if len(values) != dimension:
            raise InvalidArgument(field, f"must have {dimension} values, got {len(values)}")
        # float64: squared float32 values cannot overflow or underflow it, while in float32 the norm of large
        # values overflowed to inf (a query of zeros) and that of tiny ones to 0 (found by the fuzzer).
        vector = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(vector)):
            raise InvalidArgument(field, "must contain only finite numbers")
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise InvalidArgument(field, "must not be the zero vector")
        return (vector / norm).astype(np.float32)

    def retrieve(self, request: RetrieveInput, dimension: int) -> tuple[str | np.ndarray, RetrievalOptions]:
        """Returns (the text to embed, or the unit query vector when one was given; the options)."""
        options = RetrievalOptions(
            top_k=self.top_k("top_k", request.top_k),
            filter=self.metadata("filter", request.filter),
            min_score=self.min_score("min_score", request.min_score),
        )
        if request.vector is not None:
            return self.vector("vector.values", request.vector, dimension), options
        if request.text is None:
            raise InvalidArgument("query", "set either text or vector")
        return self.text("text", request.text), options

    def documents(self, field: str, documents: Sequence[Document]) -> list[Document]:
        if not documents:
            raise InvalidArgument(field, "must contain at least one document")
        if len(documents) > self._s.max_documents_per_request:
            raise InvalidArgument(
                field,
                f"has {len(documents)} documents, over the limit of {self._s.max_documents_per_request}",
            )
        seen: set[str] = set()
        for i, document in enumerate(documents):
            self.document_id(f"{field}[{i}].id", document.id)
            if document.id in seen:
                raise InvalidArgument(f"{field}[{i}].id", f"duplicate id {document.id!r} in this request")
            seen.add(document.id)
            self.text(f"{field}[{i}].text", document.text)
            self.metadata(f"{field}[{i}].metadata", document.metadata)
        return list(documents)

    def document_id(self, field: str, document_id: str) -> str:
        if not document_id or not document_id.strip():
            raise InvalidArgument(field, "must be a non-empty string")
        if len(document_id) > self._s.max_id_chars:
            raise InvalidArgument(field, f"is over the limit of {self._s.max_id_chars} characters")
        return document_id

    def ids(self, field: str, ids: Sequence[str]) -> list[str]:
        if not ids:
            raise InvalidArgument(field, "must contain at least one id")
        if len(ids) > self._s.max_documents_per_request:
            raise InvalidArgument(
                field, f"has {len(ids)} ids, over the limit of {self._s.max_documents_per_request}"
            )
        return [self.document_id(f"{field}[{i}]", i_) for i, i_ in enumerate(ids)]

    def sampling(self, request: GenerateInput) -> SamplingOptions:
        s = request.sampling
        max_tokens = self._s.default_max_tokens if s.max_tokens is None else s.max_tokens
        if not 1 <= max_tokens <= self._s.max_tokens:
            raise InvalidArgument(
                "sampling.max_tokens", f"must be between 1 and {self._s.max_tokens}, got {max_tokens}"
            )
        temperature = 0.0 if s.temperature is None else s.temperature
        if math.isnan(temperature) or not 0.0 <= temperature <= 2.0:
            raise InvalidArgument("sampling.temperature", f"must be between 0 and 2, got {temperature}")
        if temperature < GREEDY_BELOW_TEMPERATURE:
            temperature = 0.0
        top_p = 1.0 if s.top_p is None else s.top_p
        if math.isnan(top_p) or not 0.0 < top_p <= 1.0:
            raise InvalidArgument("sampling.top_p", f"must be in (0, 1], got {top_p}")
        top_k = 0 if s.top_k is None else s.top_k
        if top_k < 0:
            raise InvalidArgument("sampling.top_k", f"must be 0 (disabled) or positive, got {top_k}")
        if len(s.stop) > self._s.max_stop_sequences:
            raise InvalidArgument(
                "sampling.stop", f"has {len(s.stop)} entries, over the limit of {self._s.max_stop_sequences}"
            )
        for i, stop in enumerate(s.stop):
            if not stop or len(stop) > 256:
                raise InvalidArgument(f"sampling.stop[{i}]", "must be 1..256 characters")
        min_tokens = 0 if s.min_tokens is None else s.min_tokens
        if not 0 <= min_tokens <= max_tokens:
            raise InvalidArgument(
                "sampling.min_tokens", f"must be between 0 and max_tokens ({max_tokens}), got {min_tokens}"
            )
        return SamplingOptions(max_tokens, temperature, top_p, top_k, tuple(s.stop), s.seed, min_tokens)

    def messages(self, request: GenerateInput) -> list[ChatMessage]:
        if request.prompt and request.messages:
            raise InvalidArgument("prompt", "set either prompt or messages, not both")
        if request.prompt:
            return [ChatMessage("user", self.text("prompt", request.prompt, self._s.max_prompt_chars))]
        if not request.messages:
            raise InvalidArgument("prompt", "set a prompt or at least one message")
        if len(request.messages) > self._s.max_messages:
            raise InvalidArgument(
                "messages", f"has {len(request.messages)} messages, over the limit of {self._s.max_messages}"
            )
        total = 0
        for i, message in enumerate(request.messages):
            if message.role not in CHAT_ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role", f"must be one of {sorted(CHAT_ROLES)}, got {message.role[:40]!r}"
                )
            self.text(f"messages[{i}].content", message.content, self._s.max_prompt_chars)
            total += len(message.content)
        if total > self._s.max_prompt_chars:
            raise InvalidArgument(
                "messages", f"total {total} characters, over the limit of {self._s.max_prompt_chars}"
            )
        if request.messages[-1].role != "user":
            raise InvalidArgument(
                f"messages[{len(request.messages) - 1}].role", "the last message must be from the user"
            )
        return list(request.messages)

    def retrieval(self, retrieval: RetrievalInput) -> RetrievalOptions:
        return RetrievalOptions(
            top_k=self.top_k("retrieval.top_k", retrieval.top_k),
            filter=self.metadata("retrieval.filter", retrieval.filter),
            min_score=self.min_score("retrieval.min_score", retrieval.min_score),
        )
