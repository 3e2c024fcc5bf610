"""Per-caller rate limits over gRPC: requests and tokens, RetryInfo and retry-after, other callers
unaffected; two servers sharing one real Redis enforce one joint limit."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, BOB_KEY, serving
from tests.conftest import free_loopback_port
from tests.helpers import bearer, collect, doc, expect_status

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Refill so slow that no test waits long enough to see a token come back.
SLOW = 0.001


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay in the rich status details, None without one."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def retry_after(error: grpc.aio.AioRpcError) -> int | None:
    values = [v for k, v in error.trailing_metadata() or () if k == "retry-after"]
    return int(values[0]) if values else None


def assert_pushback(error: grpc.aio.AioRpcError, at_least_s: float) -> None:
    delay = retry_delay_s(error)
    assert delay is not None and delay >= at_least_s, delay
    header = retry_after(error)
    assert header is not None and header >= delay, (header, delay)


async def test_caller_over_its_request_limit_waits_while_others_are_served(
    engines: Engines, settings: Settings
) -> None:
    rules = {"Info": {"requests_per_s": SLOW, "request_burst": 2}}
    async with serving(engines, settings, api_keys=API_KEYS, rate_limits=rules) as s:
        alice, bob = bearer(ALICE_KEY), bearer(BOB_KEY)
        for _ in range(2):
            await s.stubs.info.Info(pb.InfoRequest(), metadata=alice)
        error = await expect_status(s.stubs.info.Info(pb.InfoRequest(), metadata=alice), EXHAUSTED)
        # One request refills in 1/SLOW seconds.
        assert_pushback(error, at_least_s=0.9 / SLOW)
        assert "requests" in (error.details() or "")
        await s.stubs.info.Info(pb.InfoRequest(), metadata=bob)
        # Limits are per method: alice may still embed.
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=["still fine"]), metadata=alice)
        assert s.sample("rag_rate_limited_total", caller="alice", reason="requests") == 1
        assert s.sample("rag_rate_limited_total", caller="bob", reason="requests") == 0


async def test_caller_over_its_token_limit_on_embed(engines: Engines, settings: Settings) -> None:
    rules = {"Embed": {"tokens_per_s": SLOW, "token_burst": 100}}
    forty_tokens = "x" * 160
    async with serving(engines, settings, api_keys=API_KEYS, rate_limits=rules) as s:
        alice, bob = bearer(ALICE_KEY), bearer(BOB_KEY)
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=[forty_tokens, forty_tokens]), metadata=alice)
        error = await expect_status(
            s.stubs.embed.Embed(pb.EmbedRequest(texts=[forty_tokens]), metadata=alice), EXHAUSTED
        )
        # 20 tokens left, 40 wanted: 20 must refill.
        assert_pushback(error, at_least_s=19 / SLOW)
        assert "tokens" in (error.details() or "")
        # A smaller request still fits in what is left.
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=["y" * 40]), metadata=alice)
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=[forty_tokens, forty_tokens]), metadata=bob)
        # More than the bucket can ever hold: refused without a pointless RetryInfo.
        too_big = await expect_status(
            s.stubs.embed.Embed(pb.EmbedRequest(texts=["z" * 404]), metadata=bob), EXHAUSTED
        )
        assert retry_delay_s(too_big) is None and retry_after(too_big) is None
        assert "smaller request" in (too_big.details() or "")


async def test_generate_is_priced_at_prompt_plus_max_tokens(engines: Engines, settings: Settings) -> None:
    rules = {"Generate": {"tokens_per_s": SLOW, "token_burst": 10}}
    request = pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=4))  # 1 + 4 tokens
    async with serving(engines, settings, api_keys=API_KEYS, rate_limits=rules) as s:
        alice = bearer(ALICE_KEY)
        for _ in range(2):
            messages = await collect(s.stubs.generate.Generate(request, metadata=alice))
            assert messages[-1].HasField("final")
        error = await expect_status(collect(s.stubs.generate.Generate(request, metadata=alice)), EXHAUSTED)
        assert_pushback(error, at_least_s=4 / SLOW)
        messages = await collect(s.stubs.generate.Generate(request, metadata=bearer(BOB_KEY)))
        assert messages[-1].HasField("final")


async def test_ingest_is_priced_per_message(engines: Engines, settings: Settings, isolated_tag: str) -> None:
    rules = {"Ingest": {"tokens_per_s": SLOW, "token_burst": 30}}
    twenty_tokens = "w" * 80

    async def requests() -> AsyncIterator[pb.IngestRequest]:
        for i in range(3):
            yield pb.IngestRequest(
                documents=[doc(f"rl-{isolated_tag}-{i}", twenty_tokens, test=isolated_tag)]
            )

    async with serving(engines, settings, api_keys=API_KEYS, rate_limits=rules) as s:
        alice = bearer(ALICE_KEY)
        error = await expect_status(s.stubs.documents.Ingest(requests(), metadata=alice), EXHAUSTED)
        assert retry_after(error) is not None
        # The first batch fit and stays stored, as every acknowledged Ingest batch does.
        found = await s.stubs.retrieve.Retrieve(
            pb.RetrieveRequest(text=twenty_tokens, top_k=10, filter={"test": isolated_tag}), metadata=alice
        )
        assert [hit.id for hit in found.hits] == [f"rl-{isolated_tag}-0"]


async def test_anonymous_callers_share_one_limit_when_auth_is_off(
    engines: Engines, settings: Settings
) -> None:
    rules = {"*": {"requests_per_s": SLOW, "request_burst": 1}}
    async with serving(engines, settings, rate_limits=rules) as s:
        await s.stubs.info.Info(pb.InfoRequest())
        await expect_status(s.stubs.info.Info(pb.InfoRequest()), EXHAUSTED)
        # '*' gives each method its own bucket.
        await s.stubs.embed.Embed(pb.EmbedRequest(texts=["a"]))
        assert s.sample("rag_rate_limited_total", caller="anonymous", reason="requests") == 1


async def test_two_servers_sharing_redis_enforce_one_joint_limit(
    engines: Engines, settings: Settings, redis_url: str
) -> None:
    shared = {
        "api_keys": API_KEYS,
        "rate_limits": {"Info": {"requests_per_s": SLOW, "request_burst": 3}},
        "rate_limit_backend": "redis",
        "rate_limit_redis_url": redis_url,
        # A prefix of this test's own, so no other test's buckets count.
        "rate_limit_key_prefix": f"test-{uuid.uuid4().hex}:",
    }
    async with serving(engines, settings, **shared) as first, serving(engines, settings, **shared) as second:
        alice = bearer(ALICE_KEY)
        await first.stubs.info.Info(pb.InfoRequest(), metadata=alice)
        await second.stubs.info.Info(pb.InfoRequest(), metadata=alice)
        await first.stubs.info.Info(pb.InfoRequest(), metadata=alice)
        # Each server alone saw at most two calls; together they used alice's three.
        for server in (second, first):
            error = await expect_status(server.stubs.info.Info(pb.InfoRequest(), metadata=alice), EXHAUSTED)
            assert_pushback(error, at_least_s=0.9 / SLOW)
        await second.stubs.info.Info(pb.InfoRequest(), metadata=bearer(BOB_KEY))


async def test_unreachable_redis_fails_open_or_closed_as_configured(
    engines: Engines, settings: Settings
) -> None:
    dead = {
        "rate_limits": {"Info": {"requests_per_s": 1}},
        "rate_limit_backend": "redis",
        "rate_limit_redis_url": f"redis://127.0.0.1:{free_loopback_port()}/0",
    }
    async with serving(engines, settings, rate_limit_fail_open=True, **dead) as lenient:
        await lenient.stubs.info.Info(pb.InfoRequest())
    async with serving(engines, settings, rate_limit_fail_open=False, **dead) as strict:
        await expect_status(strict.stubs.info.Info(pb.InfoRequest()), grpc.StatusCode.UNAVAILABLE)
        assert strict.sample("rag_rate_limited_total", caller="anonymous", reason="backend") == 1
