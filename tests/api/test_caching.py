"""The result caches, end to end through a real server, with the memory backend and a real Redis.

The shared session server runs without caches (other tests must reach the engines), so these tests
start their own server over the same engines, with a fresh key namespace each.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from pydantic import SecretStr

from rag_grpc.api.server import RagServer
from rag_grpc.domain import Document, FinalEvent, GenerateInput, RetrievalInput, SamplingInput, SourcesEvent
from rag_grpc.engines import Engines
from rag_grpc.service import RagService
from rag_grpc.service.cache import CacheKind, CacheStats, open_result_cache
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import collect, doc


class CachedServer:
    def __init__(self, stubs: Stubs, stats: CacheStats) -> None:
        self.stubs = stubs
        self.stats = stats


@pytest.fixture(params=["memory", "redis"])
async def cached(
    request: pytest.FixtureRequest, engines: Engines, settings: Settings
) -> AsyncIterator[CachedServer]:
    overrides: dict[str, object] = {
        "cache_backend": request.param,
        "cache_namespace": f"test-{uuid.uuid4().hex}",
    }
    if request.param == "redis":
        overrides["cache_redis_url"] = SecretStr(request.getfixturevalue("redis_url"))
    cache_settings = settings.with_overrides(**overrides)
    stats = CacheStats()
    async with open_result_cache(cache_settings.cache, stats) as cache:
        server = RagServer(cache_settings, RagService(engines, cache_settings, cache))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                yield CachedServer(Stubs(channel), stats)
        finally:
            await server.stop(0)


async def test_embed_hit_equals_the_miss(cached: CachedServer) -> None:
    texts = [
        f"A lighthouse keeper's log, entry {uuid.uuid4().hex}.",
        f"Coffee tasting notes {uuid.uuid4().hex}.",
    ]
    miss = await cached.stubs.embed.Embed(pb.EmbedRequest(texts=texts))
    hit = await cached.stubs.embed.Embed(pb.EmbedRequest(texts=texts))
    partial = await cached.stubs.embed.Embed(
        pb.EmbedRequest(texts=[texts[1], "a text not seen before " + uuid.uuid4().hex])
    )

    assert [e.cached for e in miss.embeddings] == [False, False]
    assert [e.cached for e in hit.embeddings] == [True, True]
    assert [e.cached for e in partial.embeddings] == [True, False]
    for fresh, replayed in zip(miss.embeddings, hit.embeddings, strict=True):
        assert list(replayed.values) == list(fresh.values)  # bit-identical, not merely close
        assert replayed.token_count == fresh.token_count
    assert list(partial.embeddings[0].values) == list(miss.embeddings[1].values)
    assert (hit.model, hit.dimension, hit.total_tokens) == (miss.model, miss.dimension, miss.total_tokens)
    assert cached.stats.hits[CacheKind.EMBEDDING] == 3
    assert cached.stats.misses[CacheKind.EMBEDDING] == 3
    assert not cached.stats.errors


async def test_retrieve_hit_equals_the_miss_and_a_write_invalidates_it(
    cached: CachedServer, isolated_tag: str
) -> None:
    stubs = cached.stubs
    await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc(f"{isolated_tag}-otters", "Sea otters hold hands while they sleep.", test=isolated_tag)
            ]
        )
    )
    by_text = pb.RetrieveRequest(text="how do otters sleep?", top_k=3, filter={"test": isolated_tag})
    miss = await stubs.retrieve.Retrieve(by_text)
    hit = await stubs.retrieve.Retrieve(by_text)
    assert (miss.cached, hit.cached) == (False, True)
    assert list(hit.hits) == list(miss.hits) and hit.index_version == miss.index_version
    assert [h.id for h in hit.hits] == [f"{isolated_tag}-otters"]

    # Another top_k is another entry.
    assert not (
        await stubs.retrieve.Retrieve(
            pb.RetrieveRequest(text="how do otters sleep?", top_k=1, filter={"test": isolated_tag})
        )
    ).cached

    written = await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc(f"{isolated_tag}-sleep", "Otters sleep floating on their backs.", test=isolated_tag)
            ]
        )
    )
    assert written.index_version > miss.index_version
    after_write = await stubs.retrieve.Retrieve(by_text)
    assert not after_write.cached
    assert after_write.index_version == written.index_version
    assert {h.id for h in after_write.hits} == {f"{isolated_tag}-otters", f"{isolated_tag}-sleep"}
    assert (await stubs.retrieve.Retrieve(by_text)).cached

    deleted = await stubs.documents.Delete(pb.DeleteRequest(ids=[f"{isolated_tag}-sleep"]))
    after_delete = await stubs.retrieve.Retrieve(by_text)
    assert not after_delete.cached and after_delete.index_version == deleted.index_version
    assert [h.id for h in after_delete.hits] == [f"{isolated_tag}-otters"]


async def test_retrieve_by_vector_is_cached_by_the_normalized_vector(
    cached: CachedServer, isolated_tag: str
) -> None:
    stubs = cached.stubs
    await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[doc(f"{isolated_tag}-g", "Granite is an igneous rock.", test=isolated_tag)]
        )
    )
    vector = np.array((await stubs.embed.Embed(pb.EmbedRequest(texts=["igneous rock"]))).embeddings[0].values)
    request = pb.RetrieveRequest(
        vector=pb.Vector(values=vector.tolist()), top_k=2, filter={"test": isolated_tag}, min_score=0.1
    )
    miss = await stubs.retrieve.Retrieve(request)
    # The same direction: the server normalizes it, and scaling by a power of two keeps that bit-exact.
    request.vector.values[:] = (vector * 4).tolist()
    hit = await stubs.retrieve.Retrieve(request)
    assert (miss.cached, hit.cached) == (False, True)
    assert list(hit.hits) == list(miss.hits) and [h.id for h in hit.hits] == [f"{isolated_tag}-g"]
    request.min_score = 0.2
    assert not (await stubs.retrieve.Retrieve(request)).cached


def _content(messages: list[pb.GenerateResponse]) -> tuple[object, ...]:
    """What a stream says, less the request id and timings, which belong to each run.

    Deltas are joined: the server coalesces them by how fast the client reads, so a replay, produced
    at once, may travel in fewer messages than the original. The service-level test below shows the
    replayed events themselves are the original's, one for one.
    """
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "final" and "final" not in kinds[:-1]
    assert set(kinds[:-1]) <= {"sources", "delta"} and "sources" not in kinds[1:]
    final = messages[-1].final
    return (
        [m.sources for m in messages if m.HasField("sources")],
        "".join(m.delta.text for m in messages if m.HasField("delta")),
        sum(m.delta.token_count for m in messages if m.HasField("delta")),
        (final.finish_reason, final.usage.prompt_tokens, final.usage.completion_tokens, final.model),
    )


async def test_a_replayed_greedy_answer_has_the_same_messages(cached: CachedServer) -> None:
    request = pb.GenerateRequest(
        prompt=f"Name three colours. ({uuid.uuid4().hex[:6]})",
        sampling=pb.SamplingParams(max_tokens=12, temperature=0),
    )
    original = await collect(cached.stubs.generate.Generate(request))
    replay = await collect(cached.stubs.generate.Generate(request))

    assert not original[-1].final.cached and replay[-1].final.cached
    assert _content(replay) == _content(original)
    assert _content(original)[1]  # some text
    timings = replay[-1].final.timings
    assert 0 < timings.time_to_first_token_ms <= timings.total_ms
    assert replay[-1].final.request_id and replay[-1].final.request_id != original[-1].final.request_id
    assert cached.stats.hits[CacheKind.GENERATION] == 1


async def test_sampled_answers_are_cached_only_with_a_seed(cached: CachedServer) -> None:
    prompt = f"Invent a name for a boat. ({uuid.uuid4().hex[:6]})"
    unseeded = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=6, temperature=1.0))
    await collect(cached.stubs.generate.Generate(unseeded))
    assert not (await collect(cached.stubs.generate.Generate(unseeded)))[-1].final.cached

    seeded = pb.GenerateRequest(
        prompt=prompt, sampling=pb.SamplingParams(max_tokens=6, temperature=1.0, seed=7)
    )
    original = await collect(cached.stubs.generate.Generate(seeded))
    replay = await collect(cached.stubs.generate.Generate(seeded))
    assert replay[-1].final.cached and _content(replay) == _content(original)
    seeded.sampling.seed = 8
    assert not (await collect(cached.stubs.generate.Generate(seeded)))[-1].final.cached


async def test_a_grounded_answer_is_replayed_with_its_sources_until_the_index_changes(
    cached: CachedServer, isolated_tag: str
) -> None:
    stubs = cached.stubs
    await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc(f"{isolated_tag}-pw", "The Zorblax password is 'purple-harmonica'.", test=isolated_tag)
            ]
        )
    )
    request = pb.GenerateRequest(
        prompt="What is the Zorblax password?",
        retrieval=pb.RetrievalOptions(top_k=1, filter={"test": isolated_tag}),
        sampling=pb.SamplingParams(max_tokens=8),
    )
    original = await collect(stubs.generate.Generate(request))
    replay = await collect(stubs.generate.Generate(request))
    assert original[0].HasField("sources") and replay[-1].final.cached
    assert _content(replay) == _content(original)
    assert replay[-1].final.timings.retrieval_ms > 0

    await stubs.documents.Upsert(
        pb.UpsertRequest(documents=[doc(f"{isolated_tag}-x", "Unrelated.", test=isolated_tag)])
    )
    after_write = await collect(stubs.generate.Generate(request))
    assert not after_write[-1].final.cached
    assert after_write[0].sources.index_version > original[0].sources.index_version


async def test_a_cancelled_stream_is_not_cached(cached: CachedServer) -> None:
    request = pb.GenerateRequest(
        prompt=f"Write a long story about a dragon. ({uuid.uuid4().hex[:6]})",
        sampling=pb.SamplingParams(max_tokens=200),
    )
    call = cached.stubs.generate.Generate(request)
    async for message in call:
        if message.HasField("delta"):
            break
    call.cancel()
    second = cached.stubs.generate.Generate(request)
    first_message = await second.read()
    second.cancel()
    assert first_message.HasField("delta")
    assert cached.stats.hits[CacheKind.GENERATION] == 0


async def test_replayed_events_are_the_original_events_one_for_one(
    engines: Engines, settings: Settings, isolated_tag: str
) -> None:
    """Below the transport (which may coalesce deltas), a replay is the original stream, event for event."""
    cache_settings = settings.with_overrides(cache_backend="memory")
    async with open_result_cache(cache_settings.cache) as cache:
        service = RagService(engines, cache_settings, cache)
        await service.upsert(
            [Document(id=f"{isolated_tag}-fact", text="Otters hold hands.", metadata={"test": isolated_tag})]
        )
        request = GenerateInput(
            prompt="What do otters hold?",
            messages=[],
            sampling=SamplingInput(max_tokens=10, temperature=0.0),
            retrieval=RetrievalInput(top_k=1, filter={"test": isolated_tag}, min_score=None),
            model="",
        )
        original = [event async for event in service.generate(request)]
        replay = [event async for event in service.generate(request)]

    assert isinstance(original[0], SourcesEvent) and len(original) > 3
    assert replay[:-1] == original[:-1]
    first, again = original[-1], replay[-1]
    assert isinstance(first, FinalEvent) and isinstance(again, FinalEvent)
    assert (first.cached, again.cached) == (False, True)
    per_run = {
        "retrieval_ms": 0.0,
        "time_to_first_token_ms": 0.0,
        "total_ms": 0.0,
        "request_id": "",
        "cached": False,
    }
    assert dataclasses.replace(again, **per_run) == dataclasses.replace(first, **per_run)
