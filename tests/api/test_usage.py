"""Usage reconciles with the stream: for every way a generation ends, the token counts of the deltas
add up to Final.usage.completion_tokens (tokens that produce no text travel in an empty delta)."""

from __future__ import annotations

from typing import Any

import pytest

from rag_grpc.domain import DeltaEvent, FinalEvent, FinishReason, GenerateInput, RequestContext, SamplingInput
from rag_grpc.engines import Engines
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.engines.test_vllm_generator import make_generator
from tests.fakes import fake_vllm
from tests.helpers import collect


@pytest.mark.parametrize(
    ("prompt", "sampling", "finish_reason"),
    [
        ("Write a long story about a dragon.", pb.SamplingParams(max_tokens=12), pb.FINISH_REASON_LENGTH),
        ("What is the capital of France?", pb.SamplingParams(max_tokens=64), pb.FINISH_REASON_STOP),
        (
            "Count from 1 to 20, separated by commas.",
            pb.SamplingParams(max_tokens=64, stop=["5"]),
            pb.FINISH_REASON_STOP,
        ),
    ],
    ids=["length", "end-of-sequence", "stop-sequence"],
)
async def test_delta_token_counts_add_up_to_usage(
    stubs: Stubs, prompt: str, sampling: pb.SamplingParams, finish_reason: int
) -> None:
    messages = await collect(stubs.generate.Generate(pb.GenerateRequest(prompt=prompt, sampling=sampling)))
    final = messages[-1].final
    deltas = [m.delta for m in messages if m.HasField("delta")]
    assert final.finish_reason == finish_reason
    assert sum(d.token_count for d in deltas) == final.usage.completion_tokens > 0
    if sampling.stop:
        assert "5" not in "".join(d.text for d in deltas)


async def test_an_answer_the_engine_cancels_reconciles_too(engines: Engines, settings: Settings) -> None:
    """vLLM ends a request it aborted itself with finish reason "abort": FINISH_REASON_CANCELLED."""
    async with make_generator(fake_vllm.configure(fake_vllm.word_tokenizer(), step_s=0.02)) as generator:
        spied = Engines(engines.embedder, engines.vector_store, {"fake": generator})
        service = RagService(spied, settings)
        request = GenerateInput("the lazy fox", [], SamplingInput(max_tokens=200), None, "")
        events: list[Any] = []
        async for event in service.generate(request, RequestContext("server-cancelled")):
            events.append(event)
            if len(events) == 3:
                await generator._engine.abort("server-cancelled")
    final = events[-1]
    assert isinstance(final, FinalEvent) and final.finish_reason is FinishReason.CANCELLED
    assert sum(e.token_count for e in events if isinstance(e, DeltaEvent)) == final.completion_tokens > 0
