"""What the pool needs from a client of one remote worker, whatever protocol it speaks."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from rag_grpc.domain import GenerationChunk, GenerationRequest
from rag_grpc.errors import DeadlineExceeded


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """What a worker says it serves."""

    served_name: str
    # Prompt plus answer tokens the worker accepts, when it says.
    max_context_tokens: int | None = None


class WorkerFailure(Exception):
    """The endpoint failed (refused, errored, sent malformed data, or nothing in time).

    Counted against the endpoint; the request may move to another endpoint while nothing reached the
    caller. Distinct from the caller's own faults (InvalidArgument), which no other endpoint would fix.
    """

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"{url}: {problem}")
        self.url = url
        self.problem = problem


class Worker(Protocol):
    url: str

    async def connect(self) -> WorkerModel:
        """Checks the worker answers and asks what it serves; raises WorkerFailure."""
        ...

    async def probe(self) -> int | None:
        """Raises WorkerFailure when the worker is unhealthy; returns the requests it reports queued
        or running (all its callers', not only ours), or None when it does not say."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        """Streams the answer as GenerationChunks (the last one carries the finish reason and prompt
        tokens); closing it early cancels the request on the worker."""
        ...

    async def close(self) -> None: ...


def time_left(request: GenerationRequest) -> float | None:
    """Seconds until the caller's deadline, for the worker's own deadline; None when there is none."""
    if request.deadline is None:
        return None
    left = request.deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the deadline passed before a generator worker took the request")
    return left
