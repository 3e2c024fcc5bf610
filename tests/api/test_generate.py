from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from rag_grpc.engines import Engines
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import collect, doc

STORY = "Write a long story about a dragon who learns to bake bread. Use many details."


def _text(messages: list[pb.GenerateResponse]) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


async def test_stream_shape_and_usage(stubs: Stubs) -> None:
    messages = await collect(
        stubs.generate.Generate(
            pb.GenerateRequest(
                prompt="What is the capital of France?", sampling=pb.SamplingParams(max_tokens=24)
            )
        )
    )
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert set(kinds[:-1]) == {"delta"}
    final = messages[-1].final
    assert "Paris" in _text(messages)
    assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert final.usage.prompt_tokens > 5
    streamed_tokens = sum(m.delta.token_count for m in messages[:-1])
    # The end-of-sequence token is counted in usage but carries no text.
    assert streamed_tokens <= final.usage.completion_tokens <= streamed_tokens + 1
    assert 0 < final.timings.time_to_first_token_ms <= final.timings.total_ms
    assert final.model == "SmolLM2-135M-Instruct" and final.request_id


async def test_first_delta_arrives_well_before_the_end(stubs: Stubs) -> None:
    started = time.perf_counter()
    arrivals: list[float] = []
    final = None
    async for message in stubs.generate.Generate(
        pb.GenerateRequest(prompt=STORY, sampling=pb.SamplingParams(max_tokens=48))
    ):
        arrivals.append(time.perf_counter() - started)
        if message.HasField("final"):
            final = message.final
    assert final is not None and final.finish_reason == pb.FINISH_REASON_LENGTH
    assert len(arrivals) > 20
    # Tokens arrive as they are decoded, not all at once at the end.
    assert arrivals[0] < 0.5 * arrivals[-1]


async def test_max_tokens_ends_with_length(stubs: Stubs) -> None:
    messages = await collect(
        stubs.generate.Generate(pb.GenerateRequest(prompt=STORY, sampling=pb.SamplingParams(max_tokens=5)))
    )
    final = messages[-1].final
    assert final.finish_reason == pb.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 5


async def test_stop_sequence_ends_generation_without_the_stop_text(stubs: Stubs) -> None:
    request = pb.GenerateRequest(
        prompt="Count from 1 to 20, separated by commas.", sampling=pb.SamplingParams(max_tokens=60)
    )
    unstopped = _text(await collect(stubs.generate.Generate(request)))
    assert "5" in unstopped
    request.sampling.stop.append("5")
    messages = await collect(stubs.generate.Generate(request))
    text = _text(messages)
    assert messages[-1].final.finish_reason == pb.FINISH_REASON_STOP
    assert "5" not in text
    assert unstopped.startswith(text)


async def test_greedy_generation_is_deterministic(stubs: Stubs) -> None:
    request = pb.GenerateRequest(
        prompt="Name three colours.", sampling=pb.SamplingParams(max_tokens=16, temperature=0)
    )
    first = _text(await collect(stubs.generate.Generate(request)))
    second = _text(await collect(stubs.generate.Generate(request)))
    assert first == second and first


async def test_seeded_sampling_is_reproducible(stubs: Stubs) -> None:
    sampling = pb.SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=40, seed=1234)
    request = pb.GenerateRequest(prompt="Invent a name for a boat.", sampling=sampling)
    first = _text(await collect(stubs.generate.Generate(request)))
    second = _text(await collect(stubs.generate.Generate(request)))
    assert first == second


async def test_chat_messages_are_accepted(stubs: Stubs) -> None:
    messages = await collect(
        stubs.generate.Generate(
            pb.GenerateRequest(
                messages=[
                    pb.ChatMessage(role="system", content="You answer in one word."),
                    pb.ChatMessage(role="user", content="What colour is the sky on a clear day?"),
                ],
                sampling=pb.SamplingParams(max_tokens=24),
            )
        )
    )
    assert "blue" in _text(messages).lower()


async def test_cancelling_mid_stream_aborts_the_engine_request(stubs: Stubs, engines: Engines) -> None:
    generator = engines.default_generator
    call = stubs.generate.Generate(
        pb.GenerateRequest(prompt=STORY, sampling=pb.SamplingParams(max_tokens=400))
    )
    deltas = 0
    async for message in call:
        deltas += message.HasField("delta")
        if deltas == 3:
            break
    assert generator.num_running_requests() == 1
    cancelled_at = time.perf_counter()
    call.cancel()
    while generator.num_running_requests() and time.perf_counter() - cancelled_at < 5:
        await asyncio.sleep(0.01)
    assert generator.num_running_requests() == 0
    # 400 tokens take 20 s or more here; an aborted request frees the engine within a decode step or two
    # (the bound is loose because the CI machine may be busy).
    assert time.perf_counter() - cancelled_at < 5.0


async def test_deadline_mid_stream_aborts_the_engine_request(stubs: Stubs, engines: Engines) -> None:
    generator = engines.default_generator
    call = stubs.generate.Generate(
        pb.GenerateRequest(prompt=STORY, sampling=pb.SamplingParams(max_tokens=400)), timeout=2.0
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not any(m.HasField("final") for m in received)
    deadline = time.perf_counter() + 5
    while generator.num_running_requests() and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    assert generator.num_running_requests() == 0


async def test_grounded_generation_sends_sources_first_then_answers_from_them(
    stubs: Stubs, isolated_tag: str
) -> None:
    # Fixed ids: document ids are part of the prompt, and greedy output must not depend on a random tag.
    fact = "The secret password of the Zorblax Society is 'purple-harmonica-42'."
    await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc("zorblax-secret", fact, test=isolated_tag),
                doc("zorblax-noise", "Tomatoes are botanically fruits.", test=isolated_tag),
            ]
        )
    )
    messages = await collect(
        stubs.generate.Generate(
            pb.GenerateRequest(
                prompt="What is the secret password of the Zorblax Society?",
                retrieval=pb.RetrievalOptions(top_k=1, filter={"test": isolated_tag}),
                sampling=pb.SamplingParams(max_tokens=40),
            )
        )
    )
    assert messages[0].WhichOneof("event") == "sources"
    assert [h.id for h in messages[0].sources.hits] == ["zorblax-secret"]
    assert messages[0].sources.hits[0].text == fact
    assert {m.WhichOneof("event") for m in messages[1:-1]} == {"delta"}
    assert "purple-harmonica-42" in _text(messages)
    assert messages[-1].final.timings.retrieval_ms > 0


async def test_concurrent_streams_all_complete(stubs: Stubs) -> None:
    requests = [
        pb.GenerateRequest(prompt=f"Say the number {n}.", sampling=pb.SamplingParams(max_tokens=8))
        for n in range(3)
    ]
    results = await asyncio.gather(*(collect(stubs.generate.Generate(r)) for r in requests))
    assert all(r[-1].HasField("final") for r in results)
