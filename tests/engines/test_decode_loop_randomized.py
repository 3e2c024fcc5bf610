"""A seeded random schedule of Generate calls against the real engine through the real server: joins at
random times, callers that cancel after a few messages, deadlines that pass during prefill or decoding,
stop sequences and end-of-sequence. Every call must end OK, CANCELLED or DEADLINE_EXCEEDED (never
INTERNAL or UNAVAILABLE: fewer callers than slots), and every greedy call that completes must equal its
solo output, whatever its neighbours did."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import grpc

from rag_grpc.engines import Engines
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs

SEED = 20261201
CALLS = 16
PROMPTS = (
    "What is the capital of France?",  # ends with end-of-sequence
    "Count from 1 to 20, separated by commas.",
    "Write a long story about a dragon who learns to bake bread.",
    "Name three colours.",
    "Describe a lighthouse in a storm.",
)


@dataclass
class Plan:
    request: pb.GenerateRequest
    start_after_s: float
    cancel_after_messages: int | None = None
    deadline_s: float | None = None

    @property
    def greedy(self) -> bool:
        return not self.request.sampling.HasField("temperature")


@dataclass
class Outcome:
    code: grpc.StatusCode
    text: str = ""
    final: pb.Final | None = None


def _plans(rng: random.Random) -> list[Plan]:
    plans = []
    for _ in range(CALLS):
        sampling = pb.SamplingParams(max_tokens=rng.randint(4, 24))
        if rng.random() < 0.25:
            sampling.stop.append(rng.choice([",", "5", " the"]))
        if rng.random() < 0.2:
            sampling.temperature, sampling.seed = 0.8, rng.randint(0, 1000)
        plan = Plan(pb.GenerateRequest(prompt=rng.choice(PROMPTS), sampling=sampling), rng.uniform(0.0, 1.5))
        kind = rng.random()
        if kind < 0.25:
            plan.cancel_after_messages = rng.randint(1, 3)
        elif kind < 0.5:
            plan.deadline_s = rng.uniform(0.05, 0.6)  # often passes while the prompt is being read
        plans.append(plan)
    return plans


async def _run(stubs: Stubs, plan: Plan) -> Outcome:
    await asyncio.sleep(plan.start_after_s)
    call = stubs.generate.Generate(plan.request, timeout=plan.deadline_s or 120)
    text, final, seen = [], None, 0
    try:
        async for message in call:
            seen += 1
            if message.HasField("delta"):
                text.append(message.delta.text)
            elif message.HasField("final"):
                final = message.final
            if plan.cancel_after_messages is not None and seen >= plan.cancel_after_messages:
                call.cancel()
    except asyncio.CancelledError:
        return Outcome(grpc.StatusCode.CANCELLED)
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code())
    return Outcome(grpc.StatusCode.OK, "".join(text), final)


async def test_random_joins_cancels_and_deadlines_never_disturb_the_other_streams(
    stubs: Stubs, engines: Engines
) -> None:
    plans = _plans(random.Random(SEED))
    outcomes = await asyncio.gather(*(_run(stubs, plan) for plan in plans))

    allowed = {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert {outcome.code for outcome in outcomes} <= allowed, [outcome.code for outcome in outcomes]
    generator = engines.default_generator
    async with asyncio.timeout(5):
        while generator.num_running_requests():
            await asyncio.sleep(0.01)

    compared = 0
    for plan, outcome in zip(plans, outcomes, strict=True):
        if plan.greedy and outcome.code == grpc.StatusCode.OK and plan.cancel_after_messages is None:
            solo = await _run(stubs, Plan(plan.request, 0.0))
            assert (outcome.text, outcome.final.finish_reason) == (solo.text, solo.final.finish_reason)  # type: ignore[union-attr]
            assert outcome.final.usage == solo.final.usage  # type: ignore[union-attr]
            compared += 1
    assert compared >= 4, "the schedule should leave several greedy streams to compare"
