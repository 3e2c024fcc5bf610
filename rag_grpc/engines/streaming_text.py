"""Turning a stream of token ids into a stream of text deltas, engine-independent.

Decoding token by token breaks multi-byte characters and word-piece joins, so the decoder keeps a
short window of earlier tokens and emits only text that is final. Stop sequences are cut out of
the stream: text that could still become a stop sequence is held back until it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class IncrementalDecoder:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_ids: Sequence[int]) -> str:
        """Adds tokens and returns the text that became final."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full_text[len(prefix_text) :]
        return ""


class StopSequenceFilter:
    """Holds back text that may start a stop sequence; reports when one completed."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self._stop or self.stopped:
            return "" if self.stopped else text
        buffer = self._held + text
        first = min((idx for s in self._stop if (idx := buffer.find(s)) >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:first]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(buffer)), best, -1):
                if buffer.endswith(s[:n]):
                    best = n
                    break
        return best
