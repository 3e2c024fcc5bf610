"""Decoupling the engine from the reader of a token stream.

A pump task reads events from the engine into a bounded buffer while the transport writes. Whatever
piled up during one write travels as one message (token coalescing): a reader slower than the engine
gets fewer, larger deltas, so the per-message cost of the transport does not cap the token rate. The
buffer is bounded, so a reader that stops reading makes the pump, and so the engine stream, wait
rather than grow memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from dataclasses import dataclass

from rag_grpc.domain import DeltaEvent, GenerateEvent


@dataclass(frozen=True)
class CoalescingLimits:
    max_buffered_events: int = 256
    max_tokens_per_message: int = 64
    max_chars_per_message: int = 8192


class _EndOfStream:
    pass


_END = _EndOfStream()


class CoalescingStream:
    """Use as `async with CoalescingStream(events) as stream: async for event in stream: ...`."""

    # A generator, not just an iterator: closing it is what aborts the engine's request.
    def __init__(
        self, events: AsyncGenerator[GenerateEvent, None], limits: CoalescingLimits | None = None
    ) -> None:
        self._events = events
        self._limits = limits or CoalescingLimits()
        self._buffer: asyncio.Queue[GenerateEvent | BaseException | _EndOfStream] = asyncio.Queue(
            self._limits.max_buffered_events
        )
        self._pump: asyncio.Task[None] | None = None
        self._held: GenerateEvent | BaseException | _EndOfStream | None = None

    async def __aenter__(self) -> CoalescingStream:
        self._pump = asyncio.create_task(self._run_pump())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the pump, which closes the engine stream (aborting its request if unfinished)."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with suppress(asyncio.CancelledError):
                await self._pump

    async def _run_pump(self) -> None:
        try:
            async with aclosing(self._events) as events:
                async for event in events:
                    await self._buffer.put(event)
            await self._buffer.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it in its own task
            await self._buffer.put(exc)

    def __aiter__(self) -> CoalescingStream:
        return self

    async def __anext__(self) -> GenerateEvent:
        item = self._held if self._held is not None else await self._buffer.get()
        self._held = None
        if isinstance(item, _EndOfStream):
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, DeltaEvent):
            return item
        return self._merge_available(item)

    def _merge_available(self, first: DeltaEvent) -> DeltaEvent:
        texts, tokens, chars = [first.text], first.token_count, len(first.text)
        limits = self._limits
        while tokens < limits.max_tokens_per_message and chars < limits.max_chars_per_message:
            try:
                item = self._buffer.get_nowait()
            except asyncio.QueueEmpty:
                break
            if not isinstance(item, DeltaEvent):
                self._held = item
                break
            texts.append(item.text)
            tokens += item.token_count
            chars += len(item.text)
        return DeltaEvent(text="".join(texts), token_count=tokens)
