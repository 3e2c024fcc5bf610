"""Token buckets, checked all-or-nothing: a call is admitted only if every bucket it draws on has room,
and then draws on all of them. A refused call draws on none.

Two stores implement the same arithmetic: `MemoryBuckets` for one process and `RedisBuckets`
(redis_buckets.py) so that several replicas share one limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Charge:
    """Take `cost` from the bucket `key`, which holds at most `burst` and refills `rate` per second."""

    key: str
    rate: float
    burst: float
    cost: float


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    # When refused: seconds until the limiting bucket holds enough, and its index in the charges.
    retry_after_s: float = 0.0
    limiting: int = -1


ALLOWED = Verdict(True)


class BucketStore(Protocol):
    async def charge(self, charges: Sequence[Charge]) -> Verdict:
        """Admits and draws on every bucket, or refuses and draws on none. Every cost is <= its burst."""
        ...

    async def aclose(self) -> None: ...


def refilled(level: float, elapsed_s: float, rate: float, burst: float) -> float:
    return min(burst, level + max(0.0, elapsed_s) * rate)


class MemoryBuckets:
    """Buckets in this process. There is one per caller and method, so the map stays as small as the
    set of API keys times the methods (callers are authenticated, or all 'anonymous')."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}

    async def charge(self, charges: Sequence[Charge]) -> Verdict:
        now = self._clock()
        levels = []
        wait, limiting = 0.0, -1
        for index, c in enumerate(charges):
            level, stamp = self._levels.get(c.key, (c.burst, now))
            level = refilled(level, now - stamp, c.rate, c.burst)
            levels.append(level)
            if c.cost > level and (c.cost - level) / c.rate > wait:
                wait, limiting = (c.cost - level) / c.rate, index
        if limiting >= 0:
            return Verdict(False, wait, limiting)
        for c, level in zip(charges, levels, strict=True):
            self._levels[c.key] = (level - c.cost, now)
        return ALLOWED

    async def aclose(self) -> None:
        self._levels.clear()
