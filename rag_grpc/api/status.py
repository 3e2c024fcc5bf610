"""The one map from domain exceptions to gRPC status. Nothing else decides status codes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from rag_grpc import errors

_CODES: list[tuple[type[errors.RagError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]

INTERNAL_MESSAGE = "internal error; see server logs"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None


def status_for(exc: BaseException) -> Status:
    """The status a caller sees for `exc`. Unexpected errors never leak their text to callers."""
    if isinstance(exc, errors.EngineError) or not isinstance(exc, errors.RagError):
        return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            retry_after = exc.retry_after_s if isinstance(exc, errors.ResourceExhausted) else None
            return Status(code, exc.message, retry_after)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
