"""A stand-in for the parts of vLLM 0.33 that rag_grpc uses, for tests without vLLM or a GPU.

Names, fields and defaults follow vLLM (`vllm/v1/engine/async_llm.py`, `vllm/sampling_params.py`,
`vllm/outputs.py`, `vllm/engine/arg_utils.py`). Behaviour follows AsyncLLM's contract, not what
is convenient for a caller: requests are added and decoded by a background task, outputs reach
the consumer through a collector that merges them when the consumer falls behind, stop strings
are held back and cut out, `generate` aborts its own request on CancelledError/GeneratorExit, and
an external `abort()` ends the stream with finish_reason "abort". Decoding is deterministic:
the engine "samples" the words of `script` one token per step, then EOS.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import threading
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

SCRIPT = "the quick brown fox jumps over the lazy dog"


# --- vllm.exceptions / vllm.v1.engine.exceptions


class VLLMClientError(Exception):
    """Errors caused by the request; AsyncLLM.generate re-raises these unwrapped."""


class VLLMValidationError(VLLMClientError):
    pass


class QueueOverflowError(VLLMClientError):
    """Admission refused: too many queued requests (AsyncEngineArgs.max_num_queued_reqs)."""


class EngineGenerateError(Exception):
    pass


class EngineDeadError(Exception):
    pass


# --- vllm.sampling_params


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    stream_interval: int | None = None

    def __post_init__(self) -> None:
        if self.n != 1:
            raise NotImplementedError("the fake engine decodes one sequence per request")
        if self.temperature < 0:
            raise VLLMValidationError(f"temperature must be non-negative, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be -1 or 0 (disable) or at least 1, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]


# --- vllm.engine.arg_utils


@dataclass
class AsyncEngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "auto"
    max_model_len: int | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.92
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    max_num_queued_reqs: int | None = None
    tensor_parallel_size: int = 1
    disable_log_stats: bool = False
    served_model_name: str | list[str] | None = None
    skip_tokenizer_init: bool = False
    stream_interval: int = 1
    enable_log_requests: bool = False


# --- vllm.outputs


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: Any | None
    routed_experts: Any | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any | None = None
    kv_transfer_params: dict[str, Any] | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any | None = None
    lora_request: Any | None = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int | None = None

    def add(self, next_output: RequestOutput, aggregate: bool) -> None:
        self.finished |= next_output.finished
        for nxt in next_output.outputs:
            for i, cur in enumerate(self.outputs):
                if cur.index != nxt.index:
                    continue
                if aggregate:
                    cur.text += nxt.text
                    cur.token_ids = [*cur.token_ids, *nxt.token_ids]
                    cur.finish_reason = nxt.finish_reason
                    cur.stop_reason = nxt.stop_reason
                else:
                    self.outputs[i] = nxt
                break
            else:
                self.outputs.append(nxt)


# --- vllm.v1.engine.output_processor.RequestOutputCollector


class _RequestOutputCollector:
    """One pending slot: outputs the consumer has not taken yet are merged (DELTA) or replaced."""

    def __init__(self, output_kind: RequestOutputKind, request_id: str) -> None:
        self.aggregate = output_kind == RequestOutputKind.DELTA
        self.request_id = request_id  # the internal id
        self.output: RequestOutput | BaseException | None = None
        self.ready = asyncio.Event()

    def put(self, output: RequestOutput | BaseException) -> None:
        if isinstance(self.output, RequestOutput) and isinstance(output, RequestOutput):
            self.output.add(output, aggregate=self.aggregate)
        else:
            self.output = output
        self.ready.set()

    async def get(self) -> RequestOutput:
        while self.output is None:
            await self.ready.wait()
        output, self.output = self.output, None
        self.ready.clear()
        if isinstance(output, BaseException):
            raise output
        return output


@dataclass
class _Request:
    external_id: str
    internal_id: str
    prompt_ids: list[int]
    params: SamplingParams
    collector: _RequestOutputCollector
    task: asyncio.Task[None] | None = None


# --- vllm.v1.engine.async_llm.AsyncLLM


class AsyncLLM:
    # Knobs, set on the subclasses that `configure` makes.
    tokenizer_obj: ClassVar[Any] = None
    script: ClassVar[str] = SCRIPT
    step_s: ClassVar[float] = 0.005
    max_unfinished: ClassVar[int | None] = None  # admission limit; None: AsyncEngineArgs.max_num_queued_reqs
    fail_after_steps: ClassVar[int | None] = None  # raise inside the engine after this many decode steps
    instances: ClassVar[list[AsyncLLM]] = []

    def __init__(self, engine_args: AsyncEngineArgs) -> None:
        self.engine_args = engine_args
        try:
            # Like vLLM: the output handler binds to the loop running at construction time.
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.requests: dict[str, _Request] = {}
        self.abort_calls: list[tuple[str | list[str], bool]] = []
        self.received: list[tuple[Any, SamplingParams, str]] = []
        self.shutdown_thread: int | None = None
        self._dead = False
        type(self).instances.append(self)

    @classmethod
    def from_engine_args(
        cls,
        engine_args: AsyncEngineArgs,
        start_engine_loop: bool = True,
        usage_context: Any = None,
        stat_loggers: Any = None,
    ) -> AsyncLLM:
        return cls(engine_args)

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdown_thread = threading.get_ident()
        self._dead = True
        for request in list(self.requests.values()):
            if request.task is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(request.task.cancel)

    def get_tokenizer(self) -> Any:
        return self.tokenizer_obj

    @property
    def errored(self) -> bool:
        return self._dead

    @property
    def is_running(self) -> bool:
        return not self._dead

    @property
    def dead_error(self) -> BaseException:
        return EngineDeadError()

    async def check_health(self) -> None:
        if self.errored:
            raise self.dead_error

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    async def add_request(
        self, request_id: str, prompt: Any, params: SamplingParams
    ) -> _RequestOutputCollector:
        if self.errored:
            raise EngineDeadError()
        if self.loop is not None and asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("got Future attached to a different loop")
        prompt_ids = self._prompt_ids(prompt)
        max_len = self.engine_args.max_model_len
        if max_len is not None and len(prompt_ids) >= max_len:
            raise VLLMValidationError(f"The decoder prompt (length {len(prompt_ids)}) is too long")
        limit = self.max_unfinished
        if limit is None:
            limit = self.engine_args.max_num_queued_reqs
        if limit is not None and len(self.requests) >= limit:
            raise QueueOverflowError(f"{len(self.requests)} requests queued, limit {limit}")
        internal_id = f"{request_id}-{secrets.token_hex(4)}"
        collector = _RequestOutputCollector(params.output_kind, internal_id)
        request = _Request(request_id, internal_id, prompt_ids, params, collector)
        self.requests[internal_id] = request
        request.task = asyncio.create_task(self._decode(request))
        await asyncio.sleep(0)  # the hop to the engine-core process
        return request.collector

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        prompt_text: str | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        self.received.append((prompt, sampling_params, request_id))
        q: _RequestOutputCollector | None = None
        try:
            q = await self.add_request(request_id, prompt, sampling_params)
            finished = False
            while not finished:
                out = await q.get()
                finished = out.finished
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            if q is not None:
                await self.abort(q.request_id, internal=True)
            raise
        except (EngineDeadError, VLLMClientError):
            raise
        except Exception as exc:
            if q is not None:
                await self.abort(q.request_id, internal=True)
            raise EngineGenerateError() from exc

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.abort_calls.append((request_id if isinstance(request_id, str) else ids, internal))
        for internal_id, request in list(self.requests.items()):
            if (internal_id if internal else request.external_id) not in ids:
                continue
            del self.requests[internal_id]
            if request.task is not None:
                request.task.cancel()
            if not internal:  # an external abort ends the caller's stream instead of leaving it waiting
                request.collector.put(self._output(request, "", [], "abort", None))
        await asyncio.sleep(0)  # the hop to the engine-core process

    # --- the "model"

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer_obj.encode(prompt))
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise VLLMValidationError("prompt_token_ids must be a list of int")
            return ids
        raise VLLMValidationError(f"unsupported prompt {type(prompt).__name__}")

    async def _decode(self, request: _Request) -> None:
        try:
            await self._decode_steps(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - like vLLM, hands the failure to the request's reader
            self.requests.pop(request.internal_id, None)
            request.collector.put(exc)

    async def _decode_steps(self, request: _Request) -> None:
        tokenizer = self.tokenizer_obj
        params = request.params
        script_ids = [*tokenizer.encode(self.script, add_special_tokens=False), tokenizer.eos_token_id]
        stops: list[str] = list(params.stop or [])
        # vLLM holds back text that could still turn into a stop string.
        hold = max((len(s) for s in stops), default=1) - 1 if not params.include_stop_str_in_output else 0
        generated: list[int] = []
        sent_chars = sent_tokens = 0
        step = 0
        while True:
            await asyncio.sleep(self.step_s)
            if self.fail_after_steps is not None and step >= self.fail_after_steps:
                raise RuntimeError("injected engine failure")
            token = script_ids[step % len(script_ids)]
            step += 1
            generated.append(token)
            text = tokenizer.decode(generated, skip_special_tokens=params.skip_special_tokens)
            finish: str | None = None
            stop_reason: str | None = None
            eos = token == tokenizer.eos_token_id and not params.ignore_eos
            if eos and len(generated) > params.min_tokens:
                finish = "stop"
            else:
                hits = [(text.find(s), s) for s in stops if s in text]
                if hits:
                    index, stop_reason = min(hits)
                    keep = len(stop_reason) if params.include_stop_str_in_output else 0
                    text = text[: index + keep]
                    finish = "stop"
            if finish is None and params.max_tokens is not None and len(generated) >= params.max_tokens:
                finish = "length"
            if finish is None and params.output_kind == RequestOutputKind.FINAL_ONLY:
                continue
            visible = text if finish else text[: max(sent_chars, len(text) - hold)]
            if params.output_kind == RequestOutputKind.DELTA:
                out_text, out_ids = visible[sent_chars:], generated[sent_tokens:]
            else:
                out_text, out_ids = visible, list(generated)
            sent_chars, sent_tokens = len(visible), len(generated)
            if finish is not None:
                self.requests.pop(request.internal_id, None)
            request.collector.put(self._output(request, out_text, out_ids, finish, stop_reason))
            if finish is not None:
                return

    @staticmethod
    def _output(
        request: _Request, text: str, token_ids: list[int], finish: str | None, stop_reason: str | None
    ) -> RequestOutput:
        completion = CompletionOutput(
            0, text, token_ids, None, None, finish_reason=finish, stop_reason=stop_reason
        )
        finished = finish is not None
        return RequestOutput(request.external_id, None, request.prompt_ids, None, [completion], finished)


class _AsyncTokenizerAsyncLLM(AsyncLLM):
    """Older vLLM releases made get_tokenizer a coroutine."""

    async def get_tokenizer(self) -> Any:  # type: ignore[override]
        return self.tokenizer_obj


def configure(
    tokenizer: Any,
    *,
    script: str = SCRIPT,
    step_s: float = 0.005,
    max_unfinished: int | None = None,
    fail_after_steps: int | None = None,
    async_get_tokenizer: bool = False,
) -> type[AsyncLLM]:
    """An AsyncLLM class whose engines decode `script` with `tokenizer`; `.instances` lists them."""
    base = _AsyncTokenizerAsyncLLM if async_get_tokenizer else AsyncLLM
    knobs = {
        "tokenizer_obj": tokenizer,
        "script": script,
        "step_s": step_s,
        "max_unfinished": max_unfinished,
        "fail_after_steps": fail_after_steps,
        "instances": [],
    }
    return type("FakeAsyncLLM", (base,), knobs)


def word_tokenizer(words: Iterable[str] = SCRIPT.split()) -> Any:
    """A real Hugging Face fast tokenizer (word-level, ChatML template) built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    tokens = dict.fromkeys([*specials, "user", "system", "assistant", *words])
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    )
