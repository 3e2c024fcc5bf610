"""VllmGenerator against a fake that keeps vLLM 0.33's AsyncLLM contract (tests/fakes/fake_vllm.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rag_grpc.domain import ChatMessage, FinishReason, GenerationChunk, GenerationRequest, SamplingOptions
from rag_grpc.engines.base import Generator
from rag_grpc.engines.vllm_generator import VllmApi, VllmGenerator, _map_engine_error
from rag_grpc.errors import EngineError, InvalidArgument, Unavailable
from tests.fakes import fake_vllm

SCRIPT_WORDS = fake_vllm.SCRIPT.split()
MESSAGES = [ChatMessage("system", "the dog"), ChatMessage("user", "the lazy fox")]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return fake_vllm.word_tokenizer()


def make_generator(engine_cls: type[fake_vllm.AsyncLLM]) -> VllmGenerator:
    fake = fake_vllm
    api = VllmApi(
        engine_cls, fake.AsyncEngineArgs, fake.SamplingParams, fake.RequestOutputKind, lambda: "cuda"
    )
    return VllmGenerator(
        model="/models/SmolLM2-135M-Instruct",
        tokenizer=None,
        model_id="smollm2-135m",
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        vllm_api=api,
    )


@pytest.fixture
async def generator(tokenizer: Any) -> AsyncIterator[VllmGenerator]:
    async with make_generator(fake_vllm.configure(tokenizer)) as gen:
        yield gen


@pytest.fixture
async def slow_generator(tokenizer: Any) -> AsyncIterator[VllmGenerator]:
    async with make_generator(fake_vllm.configure(tokenizer, step_s=0.05)) as gen:
        yield gen


def engine_of(gen: VllmGenerator) -> fake_vllm.AsyncLLM:
    return gen._engine


def request(max_tokens: int = 64, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(f"req-{uuid.uuid4().hex[:8]}", MESSAGES, SamplingOptions(max_tokens, **sampling))


async def collect(gen: VllmGenerator, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in gen.generate(req)]


def external_aborts(gen: VllmGenerator, request_id: str) -> int:
    return engine_of(gen).abort_calls.count((request_id, False))


async def wait_idle(gen: VllmGenerator, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while gen.num_running_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert gen.num_running_requests() == 0


def prompt_len(tokenizer: Any) -> int:
    conversation = [{"role": m.role, "content": m.content} for m in MESSAGES]
    ids = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)


async def test_streams_text_in_several_chunks(generator: VllmGenerator, tokenizer: Any) -> None:
    chunks = await collect(generator, request())

    assert len(chunks) >= 3
    assert "".join(c.text for c in chunks) == fake_vllm.SCRIPT
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason is FinishReason.STOP  # EOS
    assert sum(c.token_count for c in chunks) == len(SCRIPT_WORDS) + 1  # the words, then EOS
    assert chunks[-1].prompt_tokens == prompt_len(tokenizer)
    assert all(c.prompt_tokens == 0 for c in chunks[:-1])
    assert generator.num_running_requests() == 0


async def test_max_tokens_finishes_with_length(generator: VllmGenerator) -> None:
    chunks = await collect(generator, request(max_tokens=3))

    assert "".join(c.text for c in chunks) == "the quick brown"
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert sum(c.token_count for c in chunks) == 3


async def test_stop_string_finishes_with_stop_and_is_cut_out(generator: VllmGenerator) -> None:
    req = request(stop=("fox",))
    chunks = await collect(generator, req)

    assert "".join(c.text for c in chunks) == "the quick brown "
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert sum(c.token_count for c in chunks) == 4
    assert external_aborts(generator, req.request_id) == 0  # finished requests need no abort


async def test_sends_token_ids_and_delta_sampling_params(generator: VllmGenerator, tokenizer: Any) -> None:
    req = request(max_tokens=5, temperature=0.7, top_p=0.9, top_k=0, stop=("dog", "cat"), seed=7)
    await collect(generator, req)
    await collect(generator, request(top_k=40))

    (prompt, params, request_id), (_, params_top_k, _) = engine_of(generator).received
    assert request_id == req.request_id
    assert list(prompt) == ["prompt_token_ids"]
    assert len(prompt["prompt_token_ids"]) == prompt_len(tokenizer)
    assert params.output_kind is fake_vllm.RequestOutputKind.DELTA
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (5, 0.7, 0.9, 7)
    assert params.top_k in (0, -1)  # both mean "all tokens" to vLLM
    assert params.stop == ["dog", "cat"]
    assert params_top_k.top_k == 40 and params_top_k.stop == []


async def test_slow_consumer_gets_merged_deltas_without_losing_any(generator: VllmGenerator) -> None:
    chunks = []
    async for chunk in generator.generate(request()):
        chunks.append(chunk)
        await asyncio.sleep(0.03)  # several decode steps pile up in the collector meanwhile

    assert "".join(c.text for c in chunks) == fake_vllm.SCRIPT
    assert sum(c.token_count for c in chunks) == len(SCRIPT_WORDS) + 1
    assert len(chunks) < len(SCRIPT_WORDS)


async def test_concurrent_streams_finish_independently(generator: VllmGenerator) -> None:
    results = await asyncio.gather(*(collect(generator, request(max_tokens=n)) for n in range(1, 9)))

    for n, chunks in enumerate(results, start=1):
        assert "".join(c.text for c in chunks) == " ".join(SCRIPT_WORDS[:n])
        assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert generator.num_running_requests() == 0


async def test_cancelling_the_consumer_aborts_the_request(slow_generator: VllmGenerator) -> None:
    req = request()
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in slow_generator.generate(req):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    assert slow_generator.num_running_requests() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert external_aborts(slow_generator, req.request_id) == 1
    await wait_idle(slow_generator, within_s=0.05)  # one decode step


async def test_closing_the_iterator_early_aborts_the_request(slow_generator: VllmGenerator) -> None:
    req = request()
    stream = slow_generator.generate(req)
    async for _ in stream:
        break
    assert slow_generator.num_running_requests() == 1
    await stream.aclose()  # type: ignore[attr-defined]

    assert external_aborts(slow_generator, req.request_id) == 1
    # The engine's own stream was closed then and there (it aborts by internal id), not left to the GC.
    assert any(internal for _, internal in engine_of(slow_generator).abort_calls)
    await wait_idle(slow_generator, within_s=0.05)


async def test_abort_from_elsewhere_ends_the_stream_as_cancelled(slow_generator: VllmGenerator) -> None:
    req = request()
    chunks = []
    async for chunk in slow_generator.generate(req):
        chunks.append(chunk)
        if len(chunks) == 1:
            await engine_of(slow_generator).abort(req.request_id)

    assert chunks[-1].finish_reason is FinishReason.CANCELLED
    assert len(chunks) == 2
    assert slow_generator.num_running_requests() == 0


async def test_queue_overflow_is_unavailable(tokenizer: Any) -> None:
    async with make_generator(fake_vllm.configure(tokenizer, step_s=0.05, max_unfinished=1)) as gen:
        first = gen.generate(request())
        await anext(first)  # type: ignore[arg-type]
        with pytest.raises(Unavailable):
            await collect(gen, request())
        await first.aclose()  # type: ignore[attr-defined]
        assert gen.num_running_requests() == 0


async def test_engine_failure_mid_stream_is_engine_error(tokenizer: Any) -> None:
    async with make_generator(fake_vllm.configure(tokenizer, fail_after_steps=2)) as gen:
        req = request()
        chunks: list[GenerationChunk] = []
        with pytest.raises(EngineError):
            async for chunk in gen.generate(req):
                chunks.append(chunk)
        assert "".join(c.text for c in chunks) == "the quick"
        assert gen.num_running_requests() == 0


async def test_a_prompt_over_max_model_len_is_invalid_argument(generator: VllmGenerator) -> None:
    long = GenerationRequest("req-long", [ChatMessage("user", "fox " * 3000)], SamplingOptions(4))
    with pytest.raises(InvalidArgument) as caught:
        await collect(generator, long)
    assert caught.value.field == "prompt"
    assert generator.num_running_requests() == 0


def test_admission_errors_are_recognised_through_wrapping() -> None:
    try:
        try:
            raise fake_vllm.QueueOverflowError("full")
        except fake_vllm.QueueOverflowError as exc:
            raise fake_vllm.EngineGenerateError() from exc
    except fake_vllm.EngineGenerateError as wrapped:
        assert isinstance(_map_engine_error(wrapped), Unavailable)
    assert isinstance(_map_engine_error(fake_vllm.EngineDeadError()), Unavailable)
    assert type(_map_engine_error(fake_vllm.EngineGenerateError())) is EngineError


@pytest.mark.parametrize("async_get_tokenizer", [False, True])
async def test_lifecycle(tokenizer: Any, async_get_tokenizer: bool) -> None:
    engine_cls = fake_vllm.configure(tokenizer, async_get_tokenizer=async_get_tokenizer)
    gen = make_generator(engine_cls)
    assert engine_cls.instances == []  # nothing starts before __aenter__

    async with gen:
        (engine,) = engine_cls.instances
        assert engine.loop is asyncio.get_running_loop()
        args = engine.engine_args
        assert (args.model, args.tokenizer, args.gpu_memory_utilization, args.max_model_len) == (
            "/models/SmolLM2-135M-Instruct",
            None,
            0.5,
            2048,
        )
        assert isinstance(gen, Generator)
        assert gen.info.backend == "vllm" and gen.info.model == "smollm2-135m" and gen.info.device == "cuda"
        assert {"<|im_start|>", "<|im_end|>"} <= set(gen.control_tokens)
        assert gen.num_running_requests() == 0

    assert engine.shutdown_thread is not None and engine.shutdown_thread != threading.get_ident()
    assert gen.num_running_requests() == 0


def test_imports_and_fails_clearly_without_vllm() -> None:
    code = (
        "import sys\n"
        "sys.modules['vllm'] = None\n"  # makes `import vllm` fail even where vLLM is installed
        "from rag_grpc.engines.vllm_generator import VllmApi, VllmGenerator\n"
        "VllmGenerator('m', None, 'm', 0.5, None)\n"
        "try:\n"
        "    VllmApi.load()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "make install-vllm" in result.stdout and "pip install 'rag-grpc[gpu]'" in result.stdout
