"""The one result cache: bytes under string keys, one aiocache backend per kind of result.

Every kind (embeddings, retrieval results, Generate answers) has its own key namespace, TTL and,
in memory, its own size bound; Redis bounds by TTL (and by the server's own maxmemory policy).
Values are bytes that the caller encodes (see cache_entries.py), never pickles, so a shared Redis
cannot make the server run code.

The cache is an optimisation and never a reason to fail a call: a Redis error or timeout is logged,
counted and treated as a miss (or a skipped store).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit

import structlog
from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

from rag_grpc.settings import CacheSettings

log = structlog.get_logger(__name__)


class CacheKind(enum.StrEnum):
    EMBEDDING = "embedding"
    RETRIEVAL = "retrieval"
    GENERATION = "generation"


class CacheStats:
    """Plain hit/miss/error counters per kind; a metrics exporter reads them or passes hooks that see
    every lookup (kind name, hits, misses) and every error (kind name). Nothing else looks at them."""

    def __init__(
        self,
        on_lookup: Callable[[str, int, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.hits: Counter[CacheKind] = Counter()
        self.misses: Counter[CacheKind] = Counter()
        self.errors: Counter[CacheKind] = Counter()
        self._on_lookup = on_lookup
        self._on_error = on_error

    def record(self, kind: CacheKind, hits: int, misses: int) -> None:
        self.hits[kind] += hits
        self.misses[kind] += misses
        if self._on_lookup is not None:
            self._on_lookup(kind.value, hits, misses)

    def record_error(self, kind: CacheKind) -> None:
        self.errors[kind] += 1
        if self._on_error is not None:
            self._on_error(kind.value)


class BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]  # aiocache ships no types: its classes are Any
    """aiocache's in-process dict, bounded: past `max_entries` the least recently used entry goes.

    The overrides keep aiocache's private signatures (it calls them positionally and by keyword)."""

    def __init__(self, max_entries: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._max_entries = max_entries

    async def _get(self, key: str, encoding: str | None = "utf-8", _conn: object = None) -> bytes | None:
        value: bytes | None = self._cache.pop(key, None)
        if value is not None:
            self._cache[key] = value  # most recently used last
        return value

    async def _multi_get(
        self, keys: Sequence[str], encoding: str | None = "utf-8", _conn: object = None
    ) -> list[bytes | None]:
        return [await self._get(key) for key in keys]

    async def _set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        _cas_token: object = None,
        _conn: object = None,
    ) -> object:  # whatever the base class answers: True, or 0 when _cas_token does not match
        self._cache.pop(key, None)  # re-inserted last by the base class
        stored = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        while len(self._cache) > self._max_entries:
            await self._delete(next(iter(self._cache)))
        return stored


class ResultCache:
    """Get and set encoded results by kind; a kind without a backend is off and always misses."""

    def __init__(
        self,
        backends: dict[CacheKind, BaseCache],
        ttls_s: dict[CacheKind, int],
        namespace: str,
        stats: CacheStats | None = None,
    ) -> None:
        self._backends = backends
        self._ttls_s = ttls_s
        self._namespace = namespace
        self.stats = stats or CacheStats()
        self._warned: set[CacheKind] = set()

    @classmethod
    def disabled(cls) -> ResultCache:
        return cls({}, {}, "")

    def enabled(self, kind: CacheKind) -> bool:
        return kind in self._backends

    def _key(self, kind: CacheKind, key: str) -> str:
        return f"{self._namespace}:{kind.value}:{key}"

    async def get_many(self, kind: CacheKind, keys: Sequence[str]) -> list[bytes | None]:
        backend = self._backends.get(kind)
        if backend is None or not keys:
            return [None] * len(keys)
        try:
            values = await backend.multi_get([self._key(kind, k) for k in keys])
        except Exception as exc:  # noqa: BLE001 - a broken cache is a miss, not a failed call
            self._failed(kind, "get", exc)
            values = [None] * len(keys)
        hits = sum(v is not None for v in values)
        self.stats.record(kind, hits=hits, misses=len(keys) - hits)
        return list(values)

    async def get(self, kind: CacheKind, key: str) -> bytes | None:
        return (await self.get_many(kind, [key]))[0]

    async def set_many(self, kind: CacheKind, entries: Sequence[tuple[str, bytes]]) -> None:
        backend = self._backends.get(kind)
        if backend is None or not entries:
            return
        try:
            await backend.multi_set([(self._key(kind, k), v) for k, v in entries], ttl=self._ttls_s[kind])
        except Exception as exc:  # noqa: BLE001 - see get_many
            self._failed(kind, "set", exc)

    async def set(self, kind: CacheKind, key: str, value: bytes) -> None:
        await self.set_many(kind, [(key, value)])

    def _failed(self, kind: CacheKind, operation: str, exc: Exception) -> None:
        self.stats.record_error(kind)
        # Once per kind at warning level, so an unreachable Redis does not flood the log.
        level = "debug" if kind in self._warned else "warning"
        self._warned.add(kind)
        getattr(log, level)(
            "cache_unavailable", kind=kind.value, operation=operation, error=type(exc).__name__
        )

    async def close(self) -> None:
        for backend in {id(b): b for b in self._backends.values()}.values():
            await backend.close()


def redis_options(url: str) -> dict[str, object]:
    """aiocache RedisCache arguments for a redis:// or rediss:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("cache_redis_url must start with redis:// or rediss://")
    db = parts.path.lstrip("/") or "0"
    options: dict[str, object] = {
        "endpoint": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db),
        "password": unquote(parts.password) if parts.password else None,
        "ssl": parts.scheme == "rediss",
    }
    if parts.username:
        options["connection_pool_kwargs"] = {"username": unquote(parts.username)}
    return options


def build_result_cache(settings: CacheSettings, stats: CacheStats | None = None) -> ResultCache:
    """The cache the settings describe; kinds whose TTL is 0 are left out (always miss)."""
    limits = {
        CacheKind.EMBEDDING: (settings.cache_embedding_ttl_s, settings.cache_embedding_max_entries),
        CacheKind.RETRIEVAL: (settings.cache_retrieval_ttl_s, settings.cache_retrieval_max_entries),
        CacheKind.GENERATION: (settings.cache_generation_ttl_s, settings.cache_generation_max_entries),
    }
    limits = {kind: limit for kind, limit in limits.items() if limit[0] > 0}
    backends: dict[CacheKind, BaseCache] = {}
    if settings.cache_backend == "memory":
        # No timeout: in-process operations cannot hang, and wait_for would cost a task per call.
        backends = {
            kind: BoundedMemoryCache(max_entries, timeout=None) for kind, (_, max_entries) in limits.items()
        }
    elif settings.cache_backend == "redis" and limits:
        # One connection pool for every kind; keys are namespaced per kind.
        redis = RedisCache(
            serializer=NullSerializer(encoding=None),  # values are bytes and come back as bytes
            timeout=settings.cache_timeout_s,
            create_connection_timeout=settings.cache_timeout_s,
            **redis_options(settings.cache_redis_url.get_secret_value()),
        )
        backends = dict.fromkeys(limits, redis)
    ttls = {kind: ttl for kind, (ttl, _) in limits.items()}
    return ResultCache(backends, ttls, settings.cache_namespace, stats)


@asynccontextmanager
async def open_result_cache(
    settings: CacheSettings, stats: CacheStats | None = None
) -> AsyncIterator[ResultCache]:
    cache = build_result_cache(settings, stats)
    try:
        yield cache
    finally:
        await cache.close()
