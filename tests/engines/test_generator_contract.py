"""One contract, every generator: the real engines (vLLM for CPU in process, remote vLLM workers over
gRPC and over the OpenAI API, the transformers engine, the quantized onnxruntime engine) and the fake vLLM that other tests use to make
faults the real engine cannot make on demand. The fake runs the same checks, so it cannot drift.

Expectations come from each engine's own greedy answer, never from hard-coded model output.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_grpc.domain import ChatMessage, FinishReason, GenerationChunk, GenerationRequest, SamplingOptions
from rag_grpc.engines import Engines
from rag_grpc.engines.base import Generator
from rag_grpc.engines.remote import RemoteGenerator
from rag_grpc.engines.vllm_generator import VllmApi, VllmGenerator
from rag_grpc.errors import InvalidArgument
from tests.fakes import fake_vllm
from tests.vllm_workers import Fleet, VllmWorker

# The remote subjects are requested by name at run time, which fixture analysis cannot see.
pytestmark = pytest.mark.vllm_fleet

QUESTION = [ChatMessage("user", "What is the capital of France?")]
INT4_QUESTION = [ChatMessage("user", "What is 2+2?")]


@dataclass
class Subject:
    generator: Generator
    messages: list[ChatMessage]
    # Requests the engine itself still runs (for remote workers: what the worker reports).
    running: Callable[[], int]
    # A user message long enough to overflow the engine's context.
    overlong: str


def request(subject: Subject, max_tokens: int, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        f"contract-{uuid.uuid4().hex[:8]}", subject.messages, SamplingOptions(max_tokens, **sampling)
    )


async def collect(subject: Subject, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in subject.generator.generate(req)]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def worker_running(worker: VllmWorker) -> Callable[[], int]:
    """The worker's own count of requests it runs, from its Prometheus metrics."""
    base = worker.url.removeprefix("grpc://").removesuffix("/v1").removeprefix("http://")

    def running() -> int:
        if worker.protocol == "grpc":
            return _grpc_running(base)
        text = httpx.get(f"http://{base}/metrics", timeout=5).text
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting{"))
        )

    return running


def _grpc_running(address: str) -> int:
    import grpc

    from rag_grpc.vllm_protocol import vllm_engine_pb2 as pb
    from rag_grpc.vllm_protocol import vllm_engine_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        loads = pb_grpc.VllmEngineStub(channel).GetLoads(pb.GetLoadsRequest(), timeout=5)
    return sum(load.num_running_reqs + load.num_waiting_reqs for load in loads.loads)


# Over vLLM's max_model_len here (2048) and over the transformers and onnxruntime engines' context (8192).
OVERLONG = "word " * 9000


@pytest.fixture(scope="module")
async def remote_subjects(vllm_fleet: Fleet, generator_model_dir: Path) -> AsyncIterator[dict[str, Subject]]:
    """One single-worker remote generator per protocol, so `running` reads the worker it uses."""
    subjects: dict[str, Subject] = {}
    generators = []
    for protocol in ("grpc", "openai"):
        worker = vllm_fleet.of(protocol)[0]
        generator = RemoteGenerator([worker.url], generator_model_dir, probe_interval_s=0.5)
        await generator.__aenter__()
        generators.append(generator)
        subjects[f"remote-{protocol}"] = Subject(generator, QUESTION, worker_running(worker), OVERLONG)
    yield subjects
    for generator in generators:
        await generator.__aexit__(None, None, None)


@pytest.fixture(scope="module")
async def fake_vllm_subject() -> AsyncIterator[Subject]:
    tokenizer = fake_vllm.word_tokenizer()
    api = VllmApi(
        fake_vllm.configure(tokenizer, step_s=0.01),
        fake_vllm.AsyncEngineArgs,
        fake_vllm.SamplingParams,
        fake_vllm.RequestOutputKind,
        lambda: "cpu",
    )
    generator = VllmGenerator("/models/fake", None, "fake", 0.5, 2048, api)
    async with generator:
        messages = [ChatMessage("user", "the lazy fox")]
        yield Subject(generator, messages, generator.num_running_requests, "the " * 3000)


SUBJECTS = ["vllm", "remote-grpc", "remote-openai", "transformers", "onnxruntime", "fake-vllm"]


@pytest.fixture(params=SUBJECTS)
def subject(request: pytest.FixtureRequest) -> Subject:
    match request.param:
        case "vllm":
            vllm: VllmGenerator = request.getfixturevalue("vllm_generator")
            return Subject(vllm, QUESTION, vllm.num_running_requests, OVERLONG)
        case "transformers":
            engines: Engines = request.getfixturevalue("engines")
            generator = engines.default_generator
            return Subject(generator, QUESTION, generator.num_running_requests, OVERLONG)
        case "onnxruntime":
            quantized: Generator = request.getfixturevalue("onnxruntime_generator")
            # The int4 model's greedy answer to QUESTION runs past 200 tokens without end-of-sequence
            # (float32 says "The capital of France is Paris." and stops); this one ends by itself.
            return Subject(quantized, INT4_QUESTION, quantized.num_running_requests, OVERLONG)
        case "fake-vllm":
            fake: Subject = request.getfixturevalue("fake_vllm_subject")
            return fake
        case name:
            remote: dict[str, Subject] = request.getfixturevalue("remote_subjects")
            return remote[name]


async def test_streams_deltas_then_one_final_chunk(subject: Subject) -> None:
    chunks = await collect(subject, request(subject, 64))

    assert len(chunks) >= 2
    assert text_of(chunks).strip()
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None
    assert chunks[-1].prompt_tokens > 0
    assert 0 < sum(c.token_count for c in chunks) <= 64


async def test_max_tokens_finishes_with_length_and_counts_every_token(subject: Subject) -> None:
    chunks = await collect(subject, request(subject, 3))

    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert sum(c.token_count for c in chunks) == 3


async def test_end_of_sequence_finishes_with_stop_before_max_tokens(subject: Subject) -> None:
    chunks = await collect(subject, request(subject, 200))

    assert chunks[-1].finish_reason is FinishReason.STOP
    assert sum(c.token_count for c in chunks) < 200


async def test_stop_string_ends_the_answer_and_is_not_returned(subject: Subject) -> None:
    answer = text_of(await collect(subject, request(subject, 64)))
    stop = answer.split()[1]  # a word inside the greedy answer

    chunks = await collect(subject, request(subject, 64, stop=(stop,)))

    assert text_of(chunks) == answer[: answer.index(stop)]
    assert chunks[-1].finish_reason is FinishReason.STOP


async def test_seeded_sampling_is_reproducible(subject: Subject) -> None:
    first = await collect(subject, request(subject, 12, temperature=1.0, seed=1234))
    second = await collect(subject, request(subject, 12, temperature=1.0, seed=1234))

    assert text_of(first) == text_of(second)


async def test_concurrent_streams_finish_independently(subject: Subject) -> None:
    reqs = [request(subject, 16) for _ in range(4)]
    results = await asyncio.gather(*(collect(subject, r) for r in reqs))

    assert len({text_of(chunks) for chunks in results}) == 1
    assert all(chunks[-1].finish_reason is not None for chunks in results)


async def test_closing_the_stream_frees_the_engine_within_two_seconds(subject: Subject) -> None:
    # min_tokens keeps the answer going well past the two chunks read here.
    req = request(subject, 400, min_tokens=400)
    stream = subject.generator.generate(req)
    received = [await anext(stream), await anext(stream)]
    assert all(c.finish_reason is None for c in received)
    await stream.aclose()

    deadline = time.monotonic() + 2.0
    while await asyncio.to_thread(subject.running) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(subject.running) == 0


async def test_a_prompt_over_the_context_is_invalid_argument(subject: Subject) -> None:
    req = GenerationRequest("overlong", [ChatMessage("user", subject.overlong)], SamplingOptions(16))

    with pytest.raises(InvalidArgument) as raised:
        await collect(subject, req)

    assert raised.value.field == "prompt"
