"""The one map from domain exceptions to gRPC status. Nothing else decides status codes.

Every interceptor or handler that refuses a call raises a domain exception or hands it to `abort`,
which is the only code that turns one into a status on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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
RETRY_AFTER_KEY = "retry-after"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None
    # The request field an INVALID_ARGUMENT names (also the start of its message).
    field: str | None = None


@dataclass(frozen=True)
class _WireStatus(grpc.Status):
    """A grpc.Status we build ourselves: grpc only declares the interface, and the one rpc_status
    returns cannot be extended with trailers through its public type."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def status_for(exc: BaseException) -> Status:
    """The status a caller sees for `exc`. Unexpected errors never leak their text to callers."""
    if isinstance(exc, errors.EngineError) or not isinstance(exc, errors.RagError):
        return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            retry_after = exc.retry_after_s if isinstance(exc, errors.ResourceExhausted) else None
            field = exc.field if isinstance(exc, errors.InvalidArgument) else None
            return Status(code, exc.message, retry_after, field)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def wire_status(status: Status) -> grpc.Status:
    """`status` as sent: a google.rpc.Status whose details carry RetryInfo when the caller should come back
    later, plus a plain `retry-after` trailer (whole seconds, rounded up) for clients that read no details,
    and BadRequest naming the field of an invalid request."""
    proto = status_pb2.Status(code=status.code.value[0], message=status.message)
    if status.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=status.field, description=status.message.removeprefix(f"{status.field}: ")
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        proto.details.append(detail)
    extra: tuple[tuple[str, str], ...] = ()
    if status.retry_after_s is not None:
        delay = max(0.0, status.retry_after_s)
        seconds = int(delay)
        retry_info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((delay - seconds) * 1e9))
        )
        detail = any_pb2.Any()
        detail.Pack(retry_info)
        proto.details.append(detail)
        extra = ((RETRY_AFTER_KEY, str(max(1, math.ceil(delay)))),)
    converted = rpc_status.to_status(proto)
    return _WireStatus(converted.code, converted.details, (*converted.trailing_metadata, *extra))


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Ends the call with the status for `exc` (raises grpc.aio.AbortError, as context.abort does).
    Trailing metadata set earlier in the call (the request id) is kept."""
    status = wire_status(status_for(exc))
    earlier = tuple(context.trailing_metadata() or ())
    if earlier:
        status = _WireStatus(status.code, status.details, (*earlier, *status.trailing_metadata))
    await context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover - grpc always raises
