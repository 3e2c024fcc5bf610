"""What a request will cost in tokens, estimated before any work from its protobuf, for rate limits.

Text is counted at 4 characters per token (rounded up), the usual rule of thumb for English with
BPE tokenizers; it needs no tokenizer in the interceptor and errs on the expensive side for most
text. Generate costs its prompt plus the tokens it may produce (max_tokens, or the server default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rag_grpc.v1 import rag_pb2 as pb

CHARS_PER_TOKEN = 4


def estimated_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _texts(texts: Iterable[str]) -> int:
    return sum(estimated_tokens(t) for t in texts)


def _generate(request: pb.GenerateRequest, default_max_tokens: int) -> int:
    prompt = estimated_tokens(request.prompt) + _texts(m.content for m in request.messages)
    wanted = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else default_max_tokens
    return prompt + max(0, wanted)


_COSTS: dict[type, Callable[[Any, int], int]] = {
    pb.GenerateRequest: _generate,
    pb.EmbedRequest: lambda r, _: _texts(r.texts),
    pb.UpsertRequest: lambda r, _: _texts(d.text for d in r.documents),
    pb.IngestRequest: lambda r, _: _texts(d.text for d in r.documents),
    pb.RetrieveRequest: lambda r, _: estimated_tokens(r.text),
}


def request_tokens(request: Any, default_max_tokens: int) -> int:
    """Estimated tokens `request` makes the server read or write; 0 for requests not priced in tokens."""
    cost = _COSTS.get(type(request))
    return cost(request, default_max_tokens) if cost is not None else 0
