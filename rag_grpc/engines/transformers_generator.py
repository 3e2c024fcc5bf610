"""Generator running a Hugging Face causal LM in-process with transformers (CPU or CUDA).

Each request runs `model.generate` on the engine's worker thread and streams through a
streamer that pushes chunks onto the event loop. Cancellation sets a flag that a stopping
criterion reads at every decode step, so an abandoned request stops within one step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from rag_grpc.domain import EngineInfo, FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.engines.chat_tokens import control_tokens
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.errors import EngineError, InvalidArgument, RagError


@dataclass
class _Job:
    request: GenerationRequest
    emit: Any  # Callable[[GenerationChunk | BaseException], None], thread-safe
    abort: threading.Event = field(default_factory=threading.Event)


class TransformersGenerator:
    def __init__(self, model_dir: Path, device: str, model_id: str) -> None:
        self._model_dir = model_dir
        self._device = device
        self._model_id = model_id
        # One decode at a time: generate() on one model from two threads would only contend for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator")
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        self._context_tokens = 0
        self._running: dict[str, _Job] = {}

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for job in list(self._running.values()):
            job.abort.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self._model_dir))
        dtype = torch.float32 if self._device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(str(self._model_dir), dtype=dtype)
        self._model = model.to(self._device).eval()
        eos = self._model.generation_config.eos_token_id
        self._context_tokens = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="transformers", model=self._model_id, device=self._device)

    @property
    def control_tokens(self) -> Sequence[str]:
        return control_tokens(self._tokenizer)

    def num_running_requests(self) -> int:
        return len(self._running)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

        def emit(item: GenerationChunk | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = _Job(request=request, emit=emit)
        self._running[request.request_id] = job
        future: Future[None] = self._executor.submit(self._run, job)
        future.add_done_callback(lambda _: self._running.pop(request.request_id, None))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, RagError):
                    raise item  # the request's fault (e.g. too long for the model), not the engine's
                if isinstance(item, BaseException):
                    raise EngineError("generation failed") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Reached on normal end, on the consumer closing us early, and on task cancellation.
            job.abort.set()
            future.cancel()

    # --- worker thread

    def _run(self, job: _Job) -> None:
        try:
            self._generate(job)
        except BaseException as exc:  # reported to the consumer, which raises EngineError
            job.emit(exc)

    def _generate(self, job: _Job) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        request = job.request
        tokenizer = self._tokenizer
        conversation = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt_ids: list[int] = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        context = self._context_tokens
        if len(prompt_ids) + request.sampling.max_tokens > context:
            raise InvalidArgument(
                "prompt",
                f"is {len(prompt_ids)} tokens; with sampling.max_tokens={request.sampling.max_tokens} "
                f"it exceeds the model's context of {context} tokens",
            )
        streamer = _ChunkStreamer(tokenizer, self._eos_ids, request.sampling.stop, job)

        class _AbortCriterion(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), job.abort.is_set(), dtype=torch.bool, device=input_ids.device)

        sampling = request.sampling
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([prompt_ids], device=self._device)
        with torch.inference_mode():
            self._model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_AbortCriterion()]),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                **kwargs,
            )
        if streamer.saw_eos or streamer.stop_filter.stopped:
            reason = FinishReason.STOP
        elif job.abort.is_set():
            reason = FinishReason.CANCELLED
        elif streamer.generated >= sampling.max_tokens:
            reason = FinishReason.LENGTH
        else:
            reason = FinishReason.STOP
        tail = streamer.stop_filter.flush()
        job.emit(GenerationChunk(tail, streamer.take_pending_tokens(), reason, prompt_tokens=len(prompt_ids)))


class _ChunkStreamer:
    """transformers streamer protocol (put/end), called on the generate thread."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], stop: Sequence[str], job: _Job) -> None:
        self._decoder = IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self._eos_ids = eos_ids
        self._job = job
        self._prompt_seen = False
        self.stop_filter = StopSequenceFilter(stop)
        self.generated = 0
        self.saw_eos = False
        self._pending_tokens = 0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands the streamer the prompt
            self._prompt_seen = True
            return
        token_ids = [int(t) for t in value.reshape(-1).tolist()]
        if self.saw_eos or self.stop_filter.stopped:
            return
        self.generated += len(token_ids)
        self._pending_tokens += len(token_ids)
        if any(t in self._eos_ids for t in token_ids):
            self.saw_eos = True
            return
        text = self.stop_filter.push(self._decoder.push(token_ids))
        if self.stop_filter.stopped:
            self._job.abort.set()  # the stop sequence ended the answer; stop decoding now
        if text:
            self._job.emit(GenerationChunk(text, self.take_pending_tokens()))

    def end(self) -> None:
        pass

    def take_pending_tokens(self) -> int:
        pending, self._pending_tokens = self._pending_tokens, 0
        return pending
