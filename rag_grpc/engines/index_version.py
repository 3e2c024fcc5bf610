"""The version of an index that several replicas share (vector_store_backend=milvus).

Caches key retrieval results and grounded answers by the index version (see
rag_grpc/service/cache_entries.py). With one process holding the index the version is a field of the
store; with a shared index it must live with the shared state, so that a write acknowledged by one
replica changes the version that every other replica reads before its next cached lookup.

`RedisIndexVersion` keeps it in one Redis key, raised with INCR after each write is applied and read
with GET before each search. A key that is missing (a new or flushed Redis) is started at the current
time in microseconds rather than at 0, so a version never repeats one that a replica may still hold
cache entries for. `LocalIndexVersion` is the one-replica stand-in: a counter in this process.
"""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from rag_grpc.errors import Unavailable

# KEYS[1]: the version key. ARGV[1]: the value a missing key starts at. Returns the version now.
_READ_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v then return tonumber(v) end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return tonumber(redis.call('GET', KEYS[1]))
"""
# Same arguments; returns the version after the bump.
_BUMP_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])
"""


class IndexVersion(Protocol):
    async def read(self) -> int:
        """The version now: every write acknowledged before this call is counted."""
        ...

    async def bump(self) -> int:
        """Counts one applied write; returns the new version."""
        ...

    async def aclose(self) -> None: ...


class LocalIndexVersion:
    """A counter in this process: right only while one replica writes to and caches from the index."""

    def __init__(self) -> None:
        self._version = 0

    async def read(self) -> int:
        return self._version

    async def bump(self) -> int:
        self._version += 1
        return self._version

    async def aclose(self) -> None:
        pass


class RedisIndexVersion:
    """The version in a Redis key that every replica of the deployment reads and raises."""

    def __init__(self, url: str, key: str, timeout_s: float = 1.0) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._key = key
        self._read = self._redis.register_script(_READ_SCRIPT)
        self._bump = self._redis.register_script(_BUMP_SCRIPT)

    async def read(self) -> int:
        return await self._call(self._read)

    async def bump(self) -> int:
        return await self._call(self._bump)

    async def _call(self, script: object) -> int:
        try:
            reply = await script(keys=[self._key], args=[time.time_ns() // 1000])  # type: ignore[operator]
        except (RedisError, OSError) as exc:
            # Without the shared version no replica can tell whether its cached results are current.
            raise Unavailable(f"the index version in Redis cannot be read: {type(exc).__name__}") from exc
        return int(reply)

    async def aclose(self) -> None:
        await self._redis.aclose()
