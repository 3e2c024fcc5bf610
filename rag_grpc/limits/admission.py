"""Admission control: at most `capacity` holders at once, a bounded FIFO queue behind them, and an
optional quota per caller. Refusals are immediate, never a timeout:

- the caller already holds its quota (running or queued)  -> ResourceExhausted (the caller's doing)
- the queue is full, or the server is draining             -> Unavailable (try another replica)

It knows nothing of gRPC. The service holds a generation's slot exactly while the engine works on it
(rag_grpc/service/rag_service.py), so a caller that stops reading or leaves frees its slot the moment
its engine request ends.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from rag_grpc.errors import ResourceExhausted, Unavailable
from rag_grpc.settings import LimitSettings

# Told of every refusal: (caller, reason) with reason "caller_quota", "queue_full" or "draining".
RefusalHook = Callable[[str, str], None]


class Admission:
    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        per_caller: int = 0,
        what: str = "calls",
        on_refused: RefusalHook | None = None,
    ) -> None:
        if capacity < 1 or max_waiting < 0 or per_caller < 0:
            raise ValueError("capacity must be >= 1, max_waiting and per_caller >= 0")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.per_caller = per_caller
        self._what = what
        self._on_refused = on_refused
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._held: Counter[str] = Counter()  # running + queued, per caller
        self._draining = False

    @classmethod
    def for_generations(cls, limits: LimitSettings, on_refused: RefusalHook | None = None) -> Admission:
        return cls(
            limits.max_concurrent_generations,
            limits.max_queued_generations,
            limits.max_generations_per_caller,
            what="generations",
            on_refused=on_refused,
        )

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def draining(self) -> bool:
        return self._draining

    async def acquire(self, caller: str) -> None:
        """Takes a slot, waiting in line if all are taken; raises at once if it may not wait.
        Cancelling a waiting caller takes it out of the line."""
        if self._draining:
            self._refused(caller, "draining")
            raise Unavailable(f"server is draining; send {self._what} to another replica")
        if self.per_caller and self._held[caller] >= self.per_caller:
            self._refused(caller, "caller_quota")
            raise ResourceExhausted(
                f"caller {caller!r} already has {self._held[caller]} {self._what} running or queued "
                f"(quota {self.per_caller})"
            )
        if self._running < self.capacity and not self._waiters:
            self._running += 1
            self._held[caller] += 1
            return
        if len(self._waiters) >= self.max_waiting:
            self._refused(caller, "queue_full")
            raise Unavailable(
                f"server overloaded: {self._running} {self._what} running and {len(self._waiters)} queued"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._held[caller] += 1
        try:
            await waiter
        except BaseException:
            self._forget(caller)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed over just as we were cancelled: pass it on.
                self._hand_over()
            elif waiter.done() and not waiter.cancelled():
                self._refused(caller, "draining")  # drain() turned the waiting caller away
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, caller: str) -> None:
        self._forget(caller)
        self._hand_over()

    @asynccontextmanager
    async def slot(self, caller: str) -> AsyncIterator[None]:
        await self.acquire(caller)
        try:
            yield
        finally:
            self.release(caller)

    def drain(self) -> None:
        """Refuses new callers and everyone still queued with Unavailable; running holders finish."""
        self._draining = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable(f"server is draining; send {self._what} to another replica"))

    def _refused(self, caller: str, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(caller, reason)

    def _forget(self, caller: str) -> None:
        self._held[caller] -= 1
        if self._held[caller] <= 0:
            del self._held[caller]

    def _hand_over(self) -> None:
        # The freed slot goes straight to the first live waiter, so `running` does not dip and no
        # newcomer can overtake the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._running -= 1
