"""Errors as exceptions: one class per status code the service uses, each carrying the code, the server's
message, the request field it named and the delay it asked for.

The server names the offending field in a google.rpc.BadRequest detail and at the start of the message
(`sampling.max_tokens: must be between ...`); the delay comes in a google.rpc.RetryInfo detail, with a
`retry-after` trailer (whole seconds) for clients that read no details.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"
# `texts[2]`, `sampling.max_tokens`, `documents[0].metadata['a key']`: a name, then dots and brackets.
_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.\w+|\[[^\]]*\])*): ")
_NAMES_FIELD = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


class RagClientError(Exception):
    """A call failed. `code` is the gRPC status; `field` the request field the server named (or None);
    `retry_after_s` the server's RetryInfo delay (or None); `request_id` the server's id for the call."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.request_id = request_id


class InvalidArgument(RagClientError):
    """The request is malformed; `field` names the offending field."""


class NotFound(RagClientError):
    """A document id or model the request names does not exist."""


class FailedPrecondition(RagClientError):
    """The server cannot do this in its present state (e.g. Generate on an index-only server)."""


class ResourceExhausted(RagClientError):
    """Over a quota; `retry_after_s` says when to try again (None: no wait makes the request fit)."""


class Unavailable(RagClientError):
    """The server cannot take the call now (down, overloaded, draining); the client already retried."""


class DeadlineExceeded(RagClientError):
    """The call's deadline passed."""


class Unauthenticated(RagClientError):
    """No valid API key."""


class PermissionDenied(RagClientError):
    """The API key lacks the right for this method (e.g. a read-only key writing)."""


class Cancelled(RagClientError):
    """The call was cancelled."""


_CLASSES: dict[grpc.StatusCode, type[RagClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def error_from_status(
    code: grpc.StatusCode, message: str, trailers: Iterable[tuple[str, str | bytes]] | None
) -> RagClientError:
    """The exception for a failed call's status and trailing metadata."""
    field: str | None = None
    retry_after: float | None = None
    request_id: str | None = None
    for key, value in trailers or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    retry_after = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    field = field or next((v.field for v in bad.field_violations if v.field), None)
        elif key == "retry-after" and retry_after is None:
            with contextlib.suppress(ValueError):
                retry_after = float(_text(value))
        elif key == "x-request-id":
            request_id = _text(value)
    if field is None and code in _NAMES_FIELD and (match := _FIELD.match(message)):
        field = match.group(1)
    kind = _CLASSES.get(code, RagClientError)
    return kind(code, message, field=field, retry_after_s=retry_after, request_id=request_id)


def error_from_rpc(error: grpc.RpcError) -> RagClientError:
    """The exception for a grpc.RpcError raised by a sync or an asyncio call."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error_from_status(error.code(), error.details() or "", error.trailing_metadata())
    if isinstance(error, grpc.Call):
        return error_from_status(error.code(), error.details() or "", error.trailing_metadata())
    return RagClientError(grpc.StatusCode.UNKNOWN, str(error))
