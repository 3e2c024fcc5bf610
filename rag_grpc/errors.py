"""The domain exception hierarchy. Engines and the service raise these; exactly one place
(`rag_grpc.api.status.status_for`) turns them into gRPC status codes."""

from __future__ import annotations


class RagError(Exception):
    """Base of every error this service reports to callers on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RagError):
    """The request is malformed; `field` names the offending request field (e.g. ``texts[2]``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(RagError):
    """A document id or model the request names does not exist."""

    @classmethod
    def unknown_ids(cls, missing: list[str]) -> NotFound:
        return cls(f"ids: unknown document ids {missing[:5]}")


class FailedPrecondition(RagError):
    """The server is not in a state where this call can work (e.g. a snapshot without a data directory)."""


class ResourceExhausted(RagError):
    """The caller is over a quota; `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(RagError):
    """The server cannot take this call now (overloaded, draining, engine down); retry elsewhere or later."""


class DeadlineExceeded(RagError):
    """The call's deadline, or the server's ceiling for it, passed before the work finished."""


class Unauthenticated(RagError):
    """No valid credentials."""


class PermissionDenied(RagError):
    """Valid credentials without the right for this method."""


class EngineError(RagError):
    """An engine failed unexpectedly; reported as INTERNAL without details."""
