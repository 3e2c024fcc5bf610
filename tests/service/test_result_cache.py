"""The result cache on its own: bounds, key namespaces, and a Redis that is not there."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from rag_grpc.engines import Engines
from rag_grpc.service import RagService
from rag_grpc.service.cache import CacheKind, CacheStats, build_result_cache, open_result_cache, redis_options
from rag_grpc.settings import Settings
from tests.conftest import free_loopback_port


async def test_the_memory_cache_keeps_the_most_recently_used_entries(settings: Settings) -> None:
    bounded = settings.with_overrides(cache_backend="memory", cache_retrieval_max_entries=2)
    async with open_result_cache(bounded.cache) as cache:
        await cache.set(CacheKind.RETRIEVAL, "a", b"1")
        await cache.set(CacheKind.RETRIEVAL, "b", b"2")
        assert await cache.get(CacheKind.RETRIEVAL, "a") == b"1"  # now b is the least recently used
        await cache.set(CacheKind.RETRIEVAL, "c", b"3")
        assert await cache.get_many(CacheKind.RETRIEVAL, ["a", "b", "c"]) == [b"1", None, b"3"]
        # Kinds do not share keys or bounds.
        assert await cache.get(CacheKind.EMBEDDING, "a") is None


async def test_a_kind_with_ttl_zero_is_off(settings: Settings) -> None:
    cache = build_result_cache(
        settings.with_overrides(cache_backend="memory", cache_generation_ttl_s=0).cache
    )
    assert cache.enabled(CacheKind.EMBEDDING) and not cache.enabled(CacheKind.GENERATION)
    await cache.set(CacheKind.GENERATION, "k", b"v")
    assert await cache.get(CacheKind.GENERATION, "k") is None
    await cache.close()


async def test_redis_namespaces_and_ttls(settings: Settings, redis_url: str) -> None:
    import redis.asyncio as redis

    configured = settings.with_overrides(
        cache_backend="redis", cache_redis_url=SecretStr(redis_url), cache_namespace="ns-test"
    )
    async with open_result_cache(configured.cache) as cache:
        await cache.set(CacheKind.RETRIEVAL, "key", b"\x00\xffbytes")
        assert await cache.get(CacheKind.RETRIEVAL, "key") == b"\x00\xffbytes"
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = await client.ttl("ns-test:retrieval:key")
        assert 0 < ttl <= settings.cache.cache_retrieval_ttl_s
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_a_miss_not_a_failure(engines: Engines, settings: Settings) -> None:
    nowhere = f"redis://127.0.0.1:{free_loopback_port()}/0"  # nothing listens there
    configured = settings.with_overrides(cache_backend="redis", cache_redis_url=SecretStr(nowhere))
    stats = CacheStats()
    async with open_result_cache(configured.cache, stats) as cache:
        result = await RagService(engines, configured, cache).embed(["still answered"])
    assert result.batch.vectors.shape == (1, 384) and list(result.cached) == [False]
    assert stats.errors[CacheKind.EMBEDDING] == 2  # the lookup and the store
    assert stats.misses[CacheKind.EMBEDDING] == 1


def test_redis_urls() -> None:
    assert redis_options("rediss://user:p%40ss@cache.internal:6380/3") == {
        "endpoint": "cache.internal",
        "port": 6380,
        "db": 3,
        "password": "p@ss",
        "ssl": True,
        "connection_pool_kwargs": {"username": "user"},
    }
    with pytest.raises(ValueError, match="redis://") as caught:
        redis_options("http://:secret@host")
    assert "secret" not in str(caught.value)
