"""Ingest progress on stderr: a rich progress bar on a terminal (documents, bytes, rate, ETA), else a plain
line every few seconds and one at the end, for logs."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

PLAIN_EVERY_S = 2.0


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class IngestProgressView:
    def __init__(self, total_docs: int, total_bytes: int, terminal: bool | None = None) -> None:
        self.total_docs, self.total_bytes = total_docs, total_bytes
        self._began = time.monotonic()
        # Plain lines: the first after PLAIN_EVERY_S, so a short run writes only its closing line.
        self._last_line = self._began
        self._docs = self._bytes = 0
        console = Console(stderr=True)
        self._bar: Progress | None = None
        if console.is_terminal if terminal is None else terminal:
            self._bar = Progress(
                TextColumn("ingest"),
                BarColumn(),
                TextColumn("{task.fields[docs]}/{task.fields[total_docs]} docs"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[rate]} docs/s"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task(
                "ingest", total=max(total_bytes, 1), docs=0, total_docs=total_docs, rate="-"
            )
            self._bar.start()

    def update(self, docs: int, sent_bytes: int) -> None:
        self._docs, self._bytes = docs, sent_bytes
        elapsed = max(time.monotonic() - self._began, 1e-6)
        if self._bar is not None:
            self._bar.update(self._task, completed=sent_bytes, docs=docs, rate=f"{docs / elapsed:.1f}")
        elif time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        elapsed = max(self._last_line - self._began, 1e-6)
        speed = self._bytes / elapsed
        eta = f"{(self.total_bytes - self._bytes) / speed:.0f} s" if speed > 0 else "-"
        share = self._bytes / self.total_bytes if self.total_bytes else 1.0
        print(
            f"ingest: {self._docs}/{self.total_docs} documents ({share:.0%}), {_size(self._bytes)}/"
            f"{_size(self.total_bytes)}, {self._docs / elapsed:.1f} docs/s, {_size(speed)}/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )

    def close(self, summary: bool = True) -> None:
        """Ends the bar; without one, writes a last line unless the run failed (`summary` False)."""
        if self._bar is not None:
            self._bar.stop()
        elif summary:
            self._line()
