"""What the interceptors learn about the current call, for handlers and log lines (contextvars).

grpc.aio runs each call in its own task, so a ContextVar set by an interceptor's wrapper is seen by
the handler it wraps and by the interceptors outside it, and by nothing else.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    READ_ONLY = "read-only"
    READ_WRITE = "read-write"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the API key's name and role, never the key itself."""

    name: str
    role: Role


ANONYMOUS = Caller("anonymous", Role.READ_WRITE)


@dataclass(slots=True)
class CallInfo:
    request_id: str
    caller: Caller = ANONYMOUS


_current: ContextVar[CallInfo | None] = ContextVar("rag_grpc_call", default=None)


def current_call() -> CallInfo | None:
    return _current.get()


def current_caller() -> Caller:
    """The authenticated caller of the current call; ANONYMOUS when authentication is off."""
    info = _current.get()
    return info.caller if info is not None else ANONYMOUS


def begin_call(request_id: str) -> CallInfo:
    """Starts the record of the current call (the outermost interceptor does this)."""
    info = CallInfo(request_id)
    _current.set(info)
    return info


def set_caller(caller: Caller) -> None:
    info = _current.get()
    if info is None:
        # Without the request-log interceptor in the chain there is no record yet.
        info = begin_call("")
    info.caller = caller
