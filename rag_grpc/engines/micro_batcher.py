"""Coalesces concurrent calls into batches that one worker runs one at a time.

Callers submit a few items each (texts, queries); the worker takes whole calls from a FIFO queue
until `max_batch_size` items are gathered or `max_wait_s` has passed since the worker was free (or
since the oldest call came, if later), runs them as one batch and hands each caller its slice of
the outputs. Calls that arrive while a batch runs wait for the next one.

Waiting for company only pays under concurrency, so the worker waits only when it has seen some:
the last batch held several calls, calls arrived while it ran, or several are queued. A lone call
on an idle worker runs at once, adding no latency at concurrency 1.

- Backpressure: at most `max_queued_items` items wait; a call that would exceed this fails at once
  with Unavailable instead of queueing unboundedly (a lone call larger than the bound is admitted
  when nothing waits, or it could never run).
- Cancellation: a caller cancelled while its call still waits is removed from the queue, so its
  items are never computed; one cancelled after its batch started just does not get the result.
- Isolation: when a batch of several calls fails, each call is run again alone, so one bad call
  fails only its own caller.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rag_grpc.errors import Unavailable

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatcherStats:
    """Plain counters; a metrics exporter reads them, or passes `on_batch` to see every batch's size."""

    batches: int = 0
    items: int = 0
    # Calls refused because the queue was full.
    rejected_calls: int = 0
    # Items whose callers were cancelled before their batch ran, so they were never computed.
    dropped_items: int = 0
    on_batch: Callable[[int], None] | None = None

    def record_batch(self, items: int) -> None:
        self.batches += 1
        self.items += items
        if self.on_batch is not None:
            self.on_batch(items)

    def record_rejected(self) -> None:
        self.rejected_calls += 1

    def record_dropped(self, items: int) -> None:
        self.dropped_items += items


@dataclass(eq=False)
class _Call(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[Sequence[Out]]
    enqueued_at: float
    taken: bool = field(default=False)


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_items: int,
        stats: BatcherStats | None = None,
    ) -> None:
        self._name = name
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queued_items = max_queued_items
        self.stats = stats or BatcherStats()
        self._queue: collections.deque[_Call[In, Out]] = collections.deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # Loop time the worker last became free, and whether its last batch showed concurrency.
        self._free_since = 0.0
        self._expect_company = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"{self._name}-batcher")

    @property
    def working(self) -> bool:
        """False once the worker task has ended (stopped, or died of an error it could not survive)."""
        return self._worker is not None and not self._worker.done()

    async def stop(self) -> None:
        """Fails waiting calls with Unavailable and stops the worker (a running batch is cancelled)."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue:
            call = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(Unavailable(f"{self._name} is shutting down"))
        self._queued_items = 0

    async def submit(self, items: Sequence[In]) -> Sequence[Out]:
        """Outputs for `items`, in order, computed in a batch with whatever else is waiting."""
        if self._closed:
            raise Unavailable(f"{self._name} is shutting down")
        if self._queued_items and self._queued_items + len(items) > self._max_queued_items:
            self.stats.record_rejected()
            raise Unavailable(
                f"{self._name} is overloaded: {self._queued_items} items are waiting (limit "
                f"{self._max_queued_items}); retry later"
            )
        loop = asyncio.get_running_loop()
        call: _Call[In, Out] = _Call(items, loop.create_future(), loop.time())
        self._queue.append(call)
        self._queued_items += len(items)
        self._arrived.set()
        try:
            return await call.future
        except asyncio.CancelledError:
            if not call.taken and call in self._queue:
                self._queue.remove(call)
                self._queued_items -= len(items)
                self.stats.record_dropped(len(items))
            raise

    # --- the worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather()
            calls = self._take_batch()
            if calls:
                await self._run(calls)
                self._expect_company = len(calls) > 1 or bool(self._queue)
                self._free_since = loop.time()

    async def _gather(self) -> None:
        """Returns when a batch should start: it is full, or waiting for more has lasted max_wait_s."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._queue) == 1 and not self._expect_company:
            return
        deadline = max(self._queue[0].enqueued_at, self._free_since) + self._max_wait_s
        try:
            async with asyncio.timeout_at(deadline):
                while self._queue and self._queued_items < self._max_batch_size:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pass

    def _take_batch(self) -> list[_Call[In, Out]]:
        calls: list[_Call[In, Out]] = []
        size = 0
        while self._queue and (not calls or size + len(self._queue[0].items) <= self._max_batch_size):
            call = self._queue.popleft()
            call.taken = True
            self._queued_items -= len(call.items)
            size += len(call.items)
            calls.append(call)
        return calls

    async def _run(self, calls: list[_Call[In, Out]]) -> None:
        live = [c for c in calls if not c.future.done()]
        if not live:
            return
        items = [item for call in live for item in call.items]
        try:
            outputs = await self._run_batch(items)
        except asyncio.CancelledError:
            for call in live:
                if not call.future.done():
                    call.future.set_exception(Unavailable(f"{self._name} is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(live) == 1:
                if not live[0].future.done():
                    live[0].future.set_exception(exc)
                return
            for call in live:
                await self._run([call])
            return
        self.stats.record_batch(len(items))
        offset = 0
        for call in live:
            end = offset + len(call.items)
            if not call.future.done():
                call.future.set_result(outputs[offset:end])
            offset = end
