"""Generator running a Hugging Face causal LM in-process with transformers (CPU or CUDA).

Concurrent requests are decoded together. One scheduler thread owns the model and loops over
decode steps of a PaddedBatch; between two steps it drops rows whose consumer left, prefills the
waiting requests that fit (up to `max_batch_size` rows) and merges them into the running batch,
and removes rows that finished. Requests beyond the batch size wait in a bounded queue. Chunks
travel to each consumer's event loop in one hop per step.

An abandoned request is dropped before the next step, so it stops within one decode step and never
disturbs the rows it shared a batch with.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from rag_grpc.domain import EngineInfo, FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.engines.chat_tokens import control_tokens
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.errors import EngineError, InvalidArgument, RagError, Unavailable

if TYPE_CHECKING:  # torch is imported lazily: importing the package must not load it
    from rag_grpc.engines.padded_batch import PaddedBatch
    from rag_grpc.engines.sampling import TokenSampler

log = structlog.get_logger(__name__)

_Item = GenerationChunk | BaseException


@dataclass(eq=False)
class _Job:
    """A request as the scheduler sees it; `aborted` is set by the consumer, read by the scheduler."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    aborted: bool = False


class _Row:
    """One request in the running batch: its sampler, its text stream and its token counts."""

    def __init__(
        self,
        job: _Job,
        prompt_tokens: int,
        sampler: TokenSampler,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
    ) -> None:
        self.job = job
        self.sampler = sampler
        self.prompt_tokens = prompt_tokens
        self.last_token = -1
        self.finished = False
        self._max_tokens = job.request.sampling.max_tokens
        self._eos_ids = eos_ids
        self._decoder = IncrementalDecoder(decode)
        self._stop_filter = StopSequenceFilter(job.request.sampling.stop)
        self._generated = 0
        self._unreported_tokens = 0

    def accept(self, token: int) -> GenerationChunk | None:
        """Takes the row's next token; returns the chunk to send, if any (the last one carries the finish reason)."""
        self.last_token = token
        self._generated += 1
        self._unreported_tokens += 1
        reason: FinishReason | None
        if token in self._eos_ids:  # counted in usage, carries no text
            text, reason = "", FinishReason.STOP
        else:
            text = self._stop_filter.push(self._decoder.push([token]))
            if self._stop_filter.stopped:
                reason = FinishReason.STOP
            elif self._generated >= self._max_tokens:
                reason = FinishReason.LENGTH
            else:
                reason = None
        if reason is None:
            return self._chunk(text) if text else None
        self.finished = True
        return self._chunk(text + self._stop_filter.flush(), reason)

    def _chunk(self, text: str, reason: FinishReason | None = None) -> GenerationChunk:
        count, self._unreported_tokens = self._unreported_tokens, 0
        return GenerationChunk(text, count, reason, prompt_tokens=self.prompt_tokens)


class TransformersGenerator:
    def __init__(
        self,
        model_dir: Path,
        device: str,
        model_id: str,
        max_batch_size: int = 16,
        max_waiting_requests: int = 256,
    ) -> None:
        self._model_dir = model_dir
        self._device = device
        self._model_id = model_id
        self._max_batch_size = max_batch_size
        self._max_waiting_requests = max_waiting_requests
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        self._context_tokens = 0
        # Jobs submitted and not yet retired by the scheduler (waiting, running, or being torn down).
        self._running: set[_Job] = set()
        self._waiting: deque[_Job] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._scheduler: threading.Thread | None = None

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._load)
        self._scheduler = threading.Thread(target=self._schedule, name="generator-scheduler", daemon=True)
        self._scheduler.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.join)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rag_grpc.engines.padded_batch import PaddedBatch

        self._tokenizer = AutoTokenizer.from_pretrained(str(self._model_dir))
        dtype = torch.float32 if self._device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(str(self._model_dir), dtype=dtype)
        self._model = model.to(self._device).eval()
        eos = self._model.generation_config.eos_token_id
        self._context_tokens = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos_ids.add(self._tokenizer.eos_token_id)
        # Warm-up: the first forward pays one-off initialisation, and it shows the cache's layer types.
        with torch.inference_mode():
            batch, _ = PaddedBatch.prefill(self._model, [self._tokenizer.encode("Hello")])
        if not batch.can_merge() and self._max_batch_size > 1:
            # Sliding-window or recurrent layers cannot be left-padded and concatenated; decode one at a time.
            log.warning(
                "generator_batching_disabled", model=self._model_id, reason="cache layers cannot be merged"
            )
            self._max_batch_size = 1

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="transformers", model=self._model_id, device=self._device)

    @property
    def control_tokens(self) -> Sequence[str]:
        return control_tokens(self._tokenizer)

    def num_running_requests(self) -> int:
        return len(self._running)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        job = _Job(request=request, loop=asyncio.get_running_loop())
        with self._wakeup:
            if self._closing:
                raise Unavailable("the generator is shutting down")
            if len(self._running) >= self._max_batch_size + self._max_waiting_requests:
                raise Unavailable("too many generation requests are waiting; retry later")
            self._running.add(job)
            self._waiting.append(job)
            self._wakeup.notify()
        try:
            while True:
                item = await job.chunks.get()
                if isinstance(item, RagError):
                    raise item  # the request's fault (e.g. too long for the model), not the engine's
                if isinstance(item, BaseException):
                    raise EngineError("generation failed") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Reached on normal end, on the consumer closing us early, and on task cancellation.
            if job in self._running:
                with self._wakeup:
                    job.aborted = True
                    self._wakeup.notify()  # an idle scheduler retires a waiting job now

    # --- scheduler thread: the only code that touches the model

    def _schedule(self) -> None:
        import torch

        rows: list[_Row] = []
        batch: PaddedBatch | None = None
        while True:
            rows, batch = self._drop_rows(rows, batch, [row for row in rows if row.job.aborted])
            joining = self._next_joining(free_slots=self._max_batch_size - len(rows), idle=not rows)
            if joining is None:
                break
            try:
                with torch.inference_mode():
                    if joining:
                        rows, batch = self._admit(joining, rows, batch)
                    if batch is not None:  # there are rows to decode
                        rows, batch = self._decode_step(rows, batch)
            except Exception as exc:  # fail these requests (the batch's state is unknown), keep serving
                log.exception("generator_step_failed")
                stranded = {row.job for row in rows} | {job for job in joining if job in self._running}
                self._retire(list(stranded), exc)
                rows, batch = [], None
        with self._wakeup:
            leftover = [row.job for row in rows] + list(self._waiting)
            self._waiting.clear()
        self._retire(leftover, Unavailable("the generator is shutting down"))

    def _next_joining(self, free_slots: int, idle: bool) -> list[_Job] | None:
        """Waiting jobs that fit in the batch, blocking while there is nothing to do; None once closing."""
        with self._wakeup:
            while True:
                for job in [job for job in self._waiting if job.aborted]:
                    self._waiting.remove(job)
                    self._running.discard(job)
                if self._closing:
                    return None
                if self._waiting or not idle:
                    break
                self._wakeup.wait()
            return [self._waiting.popleft() for _ in range(min(free_slots, len(self._waiting)))]

    def _admit(
        self, jobs: list[_Job], rows: list[_Row], batch: PaddedBatch | None
    ) -> tuple[list[_Row], PaddedBatch | None]:
        """Prefills `jobs` together, sends their first tokens and merges the unfinished ones into the batch."""
        from rag_grpc.engines.padded_batch import PaddedBatch
        from rag_grpc.engines.sampling import TokenSampler, sample_next_tokens

        prompts: list[list[int]] = []
        for job in list(jobs):
            try:
                prompts.append(self._prompt_ids(job.request))
            except Exception as exc:  # noqa: BLE001 - reported to this consumer only
                self._retire([job], exc)
                jobs.remove(job)
        if not jobs:
            return rows, batch
        try:
            joined, logits = PaddedBatch.prefill(self._model, prompts)
        except Exception as exc:  # noqa: BLE001 - reported to these consumers only; the running batch goes on
            self._retire(jobs, exc)
            return rows, batch
        decode = self._decode_text
        new_rows = [
            _Row(
                job,
                len(prompt),
                TokenSampler.for_options(job.request.sampling, self._device),
                decode,
                self._eos_ids,
            )
            for job, prompt in zip(jobs, prompts)
        ]
        self._accept(new_rows, sample_next_tokens(logits, [row.sampler for row in new_rows]))
        unfinished = [index for index, row in enumerate(new_rows) if not row.finished]
        if not unfinished:
            return rows, batch
        if len(unfinished) < len(new_rows):
            joined.keep(unfinished)
        new_rows = [new_rows[index] for index in unfinished]
        if batch is None:
            return new_rows, joined
        batch.extend(joined)
        return rows + new_rows, batch

    def _decode_step(self, rows: list[_Row], batch: PaddedBatch) -> tuple[list[_Row], PaddedBatch | None]:
        import torch

        from rag_grpc.engines.sampling import sample_next_tokens

        last_tokens = torch.tensor([row.last_token for row in rows], dtype=torch.long, device=self._device)
        logits = batch.decode(self._model, last_tokens)
        self._accept(rows, sample_next_tokens(logits, [row.sampler for row in rows]))
        return self._drop_rows(rows, batch, [row for row in rows if row.finished])

    def _accept(self, rows: list[_Row], tokens: list[int]) -> None:
        outbox: list[tuple[_Job, _Item]] = []
        for row, token in zip(rows, tokens):
            if row.job.aborted:
                continue
            chunk = row.accept(token)
            if chunk is not None:
                outbox.append((row.job, chunk))
        self._retire([row.job for row in rows if row.finished])
        self._send(outbox)

    def _drop_rows(
        self, rows: list[_Row], batch: PaddedBatch | None, leaving: list[_Row]
    ) -> tuple[list[_Row], PaddedBatch | None]:
        if not leaving:
            return rows, batch
        self._retire([row.job for row in leaving])
        kept = [index for index, row in enumerate(rows) if row not in leaving]
        if not kept:
            return [], None
        assert batch is not None  # rows are never without a batch
        batch.keep(kept)
        return [rows[index] for index in kept], batch

    def _retire(self, jobs: list[_Job], error: BaseException | None = None) -> None:
        # Uncounted before the consumer can hear of it, so a caller that saw its stream end sees it gone.
        for job in jobs:
            self._running.discard(job)
        if error is not None:
            self._send([(job, error) for job in jobs])

    @staticmethod
    def _send(outbox: list[tuple[_Job, _Item]]) -> None:
        """Hands chunks to their consumers' event loops, one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, _Item]]] = {}
        for job, item in outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                pass

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        conversation = [{"role": m.role, "content": m.content} for m in request.messages]
        ids: list[int] = self._tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        max_tokens = request.sampling.max_tokens
        if len(ids) + max_tokens > self._context_tokens:
            raise InvalidArgument(
                "prompt",
                f"is {len(ids)} tokens; with sampling.max_tokens={max_tokens} "
                f"it exceeds the model's context of {self._context_tokens} tokens",
            )
        return ids

    def _decode_text(self, token_ids: list[int]) -> str:
        text: str = self._tokenizer.decode(token_ids, skip_special_tokens=True)
        return text


def _deliver(items: list[tuple[_Job, _Item]]) -> None:
    for job, item in items:
        job.chunks.put_nowait(item)
