"""Token-bucket arithmetic, in memory (with a fake clock) and in a real Redis (same answers)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rag_grpc.limits.buckets import Charge, MemoryBuckets
from rag_grpc.limits.rate_limiter import RateLimiter
from rag_grpc.limits.redis_buckets import RedisBuckets
from rag_grpc.settings import RateLimitRule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = MemoryBuckets(clock)
    charge = [Charge("k", rate=2.0, burst=4, cost=1)]
    assert [(await buckets.charge(charge)).allowed for _ in range(5)] == [True] * 4 + [False]
    refused = await buckets.charge(charge)
    assert refused.retry_after_s == pytest.approx(0.5) and refused.limiting == 0
    clock.now += 0.5
    assert (await buckets.charge(charge)).allowed
    clock.now += 100  # never beyond the burst
    assert [(await buckets.charge(charge)).allowed for _ in range(5)] == [True] * 4 + [False]


async def test_charges_are_all_or_nothing() -> None:
    buckets = MemoryBuckets(FakeClock())
    requests = Charge("req", rate=1, burst=10, cost=1)
    tokens = Charge("tok", rate=10, burst=100, cost=60)
    assert (await buckets.charge([requests, tokens])).allowed
    refused = await buckets.charge([requests, tokens])
    assert not refused.allowed and refused.limiting == 1 and refused.retry_after_s == pytest.approx(2.0)
    # The refused call drew nothing from the request bucket: nine requests are left.
    assert [(await buckets.charge([requests])).allowed for _ in range(10)] == [True] * 9 + [False]


async def test_redis_gives_the_same_answers(redis_url: str) -> None:
    buckets = RedisBuckets(redis_url, timeout_s=1.0)
    prefix = uuid.uuid4().hex
    try:
        # Refill of 1 per 1000 s: the time the test takes does not change an answer.
        requests = Charge(f"{prefix}:req", rate=0.001, burst=10, cost=1)
        tokens = Charge(f"{prefix}:tok", rate=0.01, burst=100, cost=60)
        assert (await buckets.charge([requests, tokens])).allowed
        refused = await buckets.charge([requests, tokens])
        assert not refused.allowed and refused.limiting == 1
        assert refused.retry_after_s == pytest.approx(2000.0, rel=0.01)
        assert [(await buckets.charge([requests])).allowed for _ in range(10)] == [True] * 9 + [False]
    finally:
        await buckets.aclose()


async def test_redis_admits_exactly_the_burst_under_concurrency(redis_url: str) -> None:
    """Two clients (two replicas) racing for one bucket: the Lua script makes the check atomic."""
    first, second = RedisBuckets(redis_url, 1.0), RedisBuckets(redis_url, 1.0)
    charge = [Charge(f"{uuid.uuid4().hex}:req", rate=0.001, burst=25, cost=1)]
    try:
        verdicts = await asyncio.gather(*(b.charge(charge) for _ in range(40) for b in (first, second)))
        assert sum(v.allowed for v in verdicts) == 25
    finally:
        await first.aclose()
        await second.aclose()


async def test_rules_resolve_from_the_most_specific_key() -> None:
    rules = {
        "*": RateLimitRule(requests_per_s=100),
        "rag_grpc.v1.EmbedService": RateLimitRule(requests_per_s=10),
        "Generate": RateLimitRule(requests_per_s=1),
        "/rag_grpc.v1.DocumentService/Upsert": RateLimitRule(requests_per_s=5),
        "Delete": RateLimitRule(),  # all zero: no limit
    }
    limiter = RateLimiter(rules, MemoryBuckets())
    rate = lambda m: r.requests_per_s if (r := limiter.rule_for(m)) else None  # noqa: E731
    assert rate("/rag_grpc.v1.EmbedService/Embed") == 10
    assert rate("/rag_grpc.v1.GenerateService/Generate") == 1
    assert rate("/rag_grpc.v1.DocumentService/Upsert") == 5
    assert rate("/rag_grpc.v1.DocumentService/Delete") is None
    assert rate("/rag_grpc.v1.InfoService/Info") == 100
    # '*' leaves health and reflection alone.
    assert rate("/grpc.health.v1.Health/Check") is None
