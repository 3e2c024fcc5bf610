"""TransformersGenerator decoding concurrent requests together, checked against plain `model.generate`.

Each request's greedy output must equal what unbatched `model.generate` produces for it, however many
other requests share its batch, join it, finish or are cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag_grpc.domain import ChatMessage, FinishReason, GenerationChunk, GenerationRequest, SamplingOptions
from rag_grpc.engines import Engines
from rag_grpc.engines.transformers_generator import TransformersGenerator
from rag_grpc.errors import Unavailable
from tests.engines.conftest import ReferenceLM

CAPITAL = "What is the capital of France?"  # a short answer that ends with end-of-sequence
STORY = "Write a long story about a dragon who learns to bake bread. Use many details."
COUNT = "Count from 1 to 20, separated by commas."
COLOURS = "Name three colours."


@dataclass
class Outcome:
    text: str
    tokens: int
    finish_reason: FinishReason | None


def _request(
    prompt: str, max_tokens: int, stop: tuple[str, ...] = (), **sampling: float
) -> GenerationRequest:
    options = SamplingOptions(max_tokens=max_tokens, stop=stop, **sampling)  # type: ignore[arg-type]
    return GenerationRequest(uuid.uuid4().hex, [ChatMessage("user", prompt)], options)


async def _run(generator: TransformersGenerator, request: GenerationRequest) -> Outcome:
    chunks: list[GenerationChunk] = [chunk async for chunk in generator.generate(request)]
    return Outcome(
        "".join(c.text for c in chunks), sum(c.token_count for c in chunks), chunks[-1].finish_reason
    )


def _expected(lm: ReferenceLM, prompt: str, max_tokens: int) -> Outcome:
    tokens = lm.greedy(prompt, max_tokens)
    ended = tokens[-1] == lm.tokenizer.eos_token_id
    return Outcome(lm.text(tokens), len(tokens), FinishReason.STOP if ended else FinishReason.LENGTH)


@pytest.fixture(scope="module")
def generator(engines: Engines) -> TransformersGenerator:
    generator = engines.default_generator
    assert isinstance(generator, TransformersGenerator)
    return generator


async def _wait_until_idle(generator: TransformersGenerator) -> None:
    for _ in range(3000):
        if generator.num_running_requests() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine still reports running requests")


async def test_a_single_greedy_request_decodes_exactly_like_generate(
    generator: TransformersGenerator, reference_lm: ReferenceLM
) -> None:
    for prompt in (CAPITAL, COLOURS):
        assert await _run(generator, _request(prompt, 32)) == _expected(reference_lm, prompt, 32)


async def test_concurrent_streams_with_different_limits_and_stops_each_finish_as_they_would_alone(
    generator: TransformersGenerator, reference_lm: ReferenceLM
) -> None:
    counting = _expected(reference_lm, COUNT, 40)
    assert "5" in counting.text
    outcomes = await asyncio.gather(
        _run(generator, _request(STORY, 30)),
        _run(generator, _request(COUNT, 40, stop=("5",))),
        _run(generator, _request(CAPITAL, 40)),
        _run(generator, _request(COLOURS, 1)),
        _run(generator, _request(COLOURS, 12)),
    )
    story, stopped, capital, one_token, colours = outcomes
    assert story == _expected(reference_lm, STORY, 30) and story.finish_reason == FinishReason.LENGTH
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.text == counting.text[: counting.text.index("5")]
    assert capital == _expected(reference_lm, CAPITAL, 40) and capital.finish_reason == FinishReason.STOP
    assert one_token.tokens == 1 and one_token.finish_reason == FinishReason.LENGTH
    assert colours == _expected(reference_lm, COLOURS, 12)
    assert generator.num_running_requests() == 0


async def test_cancelling_one_of_several_streams_leaves_the_others_identical_to_their_solo_output(
    generator: TransformersGenerator, reference_lm: ReferenceLM
) -> None:
    expected_story, expected_count = _expected(reference_lm, STORY, 40), _expected(reference_lm, COUNT, 40)
    first_chunks = asyncio.Event()

    async def abandoned() -> None:
        seen = 0
        async for _ in generator.generate(_request(STORY + " Make it very long.", 400)):
            seen += 1
            if seen == 3:
                first_chunks.set()

    story = asyncio.create_task(_run(generator, _request(STORY, 40)))
    victim = asyncio.create_task(abandoned())
    count = asyncio.create_task(_run(generator, _request(COUNT, 40)))
    await first_chunks.wait()
    running_before = generator.num_running_requests()
    victim.cancel()
    # The cancelled request leaves the batch at the next step boundary, long before the others end.
    while generator.num_running_requests() >= running_before:
        await asyncio.sleep(0.005)
    assert not story.done() and not count.done()
    assert await story == expected_story
    assert await count == expected_count
    with pytest.raises(asyncio.CancelledError):
        await victim
    await _wait_until_idle(generator)


async def test_closing_a_stream_early_removes_its_request(generator: TransformersGenerator) -> None:
    async with aclosing(generator.generate(_request(STORY, 400))) as chunks:
        async for _ in chunks:
            assert generator.num_running_requests() == 1
            break
    await _wait_until_idle(generator)


async def test_seeded_sampling_draws_the_same_text_alone_and_in_a_batch(
    generator: TransformersGenerator,
) -> None:
    sampled = _request(STORY, 24, temperature=0.9, top_p=0.95, top_k=50, seed=99)
    alone = await _run(generator, sampled)
    together, *_ = await asyncio.gather(
        _run(generator, sampled), _run(generator, _request(COUNT, 30)), _run(generator, _request(CAPITAL, 30))
    )
    assert together == alone
    unseeded = await _run(generator, _request(STORY, 24, temperature=0.9, top_p=0.95, top_k=50))
    assert unseeded.tokens == 24


async def test_requests_beyond_the_batch_size_wait_then_complete_and_a_full_queue_is_refused(
    generator_model_dir: Path, reference_lm: ReferenceLM
) -> None:
    small = TransformersGenerator(
        generator_model_dir, "cpu", "small-batch", max_batch_size=2, max_waiting_requests=1
    )
    async with small:
        first, second = small.generate(_request(STORY, 24)), small.generate(_request(COUNT, 24))
        first_chunks = [await anext(first), await anext(second)]
        # Both batch slots are busy: the next request waits, the one after it finds the queue full.
        waiting = asyncio.create_task(_run(small, _request(COLOURS, 16)))
        await asyncio.sleep(0)
        assert small.num_running_requests() == 3
        with pytest.raises(Unavailable):
            await anext(small.generate(_request(CAPITAL, 8)))
        story = first_chunks[0].text + "".join([c.text async for c in first])
        counting = first_chunks[1].text + "".join([c.text async for c in second])
        assert story == _expected(reference_lm, STORY, 24).text
        assert counting == _expected(reference_lm, COUNT, 24).text
        assert await waiting == _expected(reference_lm, COLOURS, 16)

        # Shutting down ends a request still in flight with UNAVAILABLE instead of leaving it hanging.
        in_flight = small.generate(_request(STORY, 400))
        await anext(in_flight)
    with pytest.raises(Unavailable):
        async for _ in in_flight:
            pass
    assert small.num_running_requests() == 0


async def test_a_failed_decode_step_is_retried_from_the_rows_tokens(
    generator: TransformersGenerator, reference_lm: ReferenceLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_grpc.engines import padded_batch

    decode = padded_batch.PaddedBatch.decode
    steps = 0

    def fails_once(self: padded_batch.PaddedBatch, model: object, tokens: object) -> object:
        nonlocal steps
        steps += 1
        if steps == 3:
            raise RuntimeError("injected: one decode step fails")
        return decode(self, model, tokens)  # type: ignore[arg-type]

    monkeypatch.setattr(padded_batch.PaddedBatch, "decode", fails_once)
    story, count = await asyncio.gather(
        _run(generator, _request(STORY, 16)), _run(generator, _request(COUNT, 16))
    )
    assert steps > 3
    assert story == _expected(reference_lm, STORY, 16)
    assert count == _expected(reference_lm, COUNT, 16)


async def test_a_step_that_keeps_failing_ends_its_rows_with_unavailable_and_the_engine_goes_on(
    generator: TransformersGenerator, reference_lm: ReferenceLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_grpc.engines import padded_batch

    decode = padded_batch.PaddedBatch.decode

    def always_fails(self: padded_batch.PaddedBatch, model: object, tokens: object) -> object:
        raise RuntimeError("injected: every decode step fails")

    monkeypatch.setattr(padded_batch.PaddedBatch, "decode", always_fails)
    results = await asyncio.gather(
        _run(generator, _request(STORY, 16)), _run(generator, _request(COUNT, 16)), return_exceptions=True
    )
    assert all(isinstance(result, Unavailable) for result in results), results
    monkeypatch.setattr(padded_batch.PaddedBatch, "decode", decode)
    await generator.check_health()
    assert await _run(generator, _request(COLOURS, 12)) == _expected(reference_lm, COLOURS, 12)
