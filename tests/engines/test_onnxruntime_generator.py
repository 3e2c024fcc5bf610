"""What the generator contract does not cover for the onnxruntime engine: rows of different lengths
decoded together, and rows leaving the batch mid-answer, give each request exactly the answer it gets
alone (the cache rows are ragged and compacted in place)."""

from __future__ import annotations

import asyncio
import uuid

from rag_grpc.domain import ChatMessage, GenerationRequest, SamplingOptions
from rag_grpc.engines.base import Generator

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow and say something about each of them, please.",
    "Hi",
]


def _request(prompt: str, max_tokens: int = 16, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        f"ort-{uuid.uuid4().hex[:8]}",
        [ChatMessage("user", prompt)],
        SamplingOptions(max_tokens, **sampling),  # type: ignore[arg-type]
    )


async def _text(generator: Generator, request: GenerationRequest) -> str:
    return "".join([chunk.text async for chunk in generator.generate(request)])


async def test_ragged_rows_decoded_together_answer_as_they_do_alone(onnxruntime_generator: Generator) -> None:
    alone = [await _text(onnxruntime_generator, _request(prompt)) for prompt in PROMPTS]

    together = await asyncio.gather(*(_text(onnxruntime_generator, _request(p)) for p in PROMPTS))

    assert list(together) == alone


async def test_rows_leaving_mid_answer_do_not_disturb_the_others(onnxruntime_generator: Generator) -> None:
    alone = [await _text(onnxruntime_generator, _request(prompt, 24)) for prompt in PROMPTS[1:]]

    async def leaves_early() -> None:
        stream = onnxruntime_generator.generate(_request(PROMPTS[0], 200, min_tokens=200))
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the first row leaves; the last one moves into its place

    results = await asyncio.gather(
        leaves_early(), *(_text(onnxruntime_generator, _request(p, 24)) for p in PROMPTS[1:])
    )

    assert list(results[1:]) == alone
    assert onnxruntime_generator.num_running_requests() == 0
