"""The wait-and-retry rule for RESOURCE_EXHAUSTED with RetryInfo, and the deadline it must fit in."""

from __future__ import annotations

import time

from rag_grpc_client.config import Retries
from rag_grpc_client.errors import RagClientError, ResourceExhausted


class Attempts:
    """One logical call: its deadline across every attempt, and whether another attempt is worth it."""

    def __init__(self, retries: Retries, timeout: float | None) -> None:
        self._retries = retries
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._made = 0

    def timeout(self) -> float | None:
        """What is left of the deadline, for the next attempt."""
        if self._deadline is None:
            return None
        return max(0.001, self._deadline - time.monotonic())

    def wait_before_retry(self, error: RagClientError) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` is final."""
        self._made += 1
        delay = error.retry_after_s
        if not isinstance(error, ResourceExhausted) or delay is None:
            return None
        if self._made >= self._retries.resource_exhausted_attempts or delay > self._retries.max_wait_s:
            return None
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        return delay
