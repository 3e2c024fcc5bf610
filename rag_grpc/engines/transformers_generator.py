"""Generator running a Hugging Face causal LM in-process with transformers (CPU or CUDA).

Concurrent requests are decoded together. One scheduler thread owns the model and loops over
decode steps of a PaddedBatch; between two steps it drops rows whose consumer left, reads the
prompts of the waiting requests that fit (up to `max_batch_size` rows) about
`prefill_chunk_tokens` tokens per step, merges them into the running batch once read, and removes
rows that finished. So a long prompt delays the running rows by one chunk per step rather than by
its whole length, and a caller that leaves while its prompt is read costs at most one more chunk
(and the rows that stay stop paying for its padding).
Chunks of text travel to each consumer's event loop in one hop per step.

A consumer that leaves (cancelled, deadline, closed stream) stops counting against the engine's
capacity at once; its row is cut out before the next step, so it never disturbs its neighbours.
A decode step that fails is retried once after recomputing the batch's cache from its rows'
tokens (as vLLM recomputes preempted requests); only if that fails too are the rows ended, with
UNAVAILABLE (retryable), and the engine goes on with the requests that come next.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from rag_grpc.domain import EngineInfo, FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.errors import EngineError, RagError, Unavailable

if TYPE_CHECKING:  # torch is imported lazily: importing the package must not load it
    from collections.abc import AsyncGenerator, Sequence

    import torch

    from rag_grpc.engines.padded_batch import PaddedBatch, Prefill
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


@dataclass(eq=False)
class _Reading:
    """A group of requests whose prompts are being read (prefilled) a chunk at a time."""

    jobs: list[_Job]
    prompts: list[list[int]]
    prefill: Prefill


class _Row:
    """One request in the running batch: its tokens, its sampler and its text stream.

    Invariant between steps: the batch's cache holds `prompt + generated[:-1]` and the next step
    feeds `generated[-1]`, so a row always has at least one generated token.
    """

    def __init__(self, job: _Job, prompt: list[int], sampler: TokenSampler, template: ChatTemplate) -> None:
        self.job = job
        self.prompt = prompt
        self.sampler = sampler
        self.generated: list[int] = []
        self.finished = False
        sampling = job.request.sampling
        self.min_tokens = sampling.min_tokens
        self._max_tokens = sampling.max_tokens
        self._decoder = IncrementalDecoder(template.decode)
        self._stop_filter = StopSequenceFilter(sampling.stop)
        self._unreported_tokens = 0

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def accept(self, token: int, eos_ids: set[int]) -> GenerationChunk | None:
        """Takes the row's next token; returns the chunk to send, if any (the last one carries the finish reason)."""
        self.generated.append(token)
        self._unreported_tokens += 1
        reason: FinishReason | None
        if token in eos_ids:  # counted in usage, carries no text
            text, reason = "", FinishReason.STOP
        else:
            text = self._stop_filter.push(self._decoder.push([token]))
            if self._stop_filter.stopped:
                reason = FinishReason.STOP
            elif len(self.generated) >= self._max_tokens:
                reason = FinishReason.LENGTH
            else:
                reason = None
        if reason is None:
            return self._chunk(text) if text else None
        self.finished = True
        return self._chunk(text + self._stop_filter.flush(), reason)

    def _chunk(self, text: str, reason: FinishReason | None = None) -> GenerationChunk:
        count, self._unreported_tokens = self._unreported_tokens, 0
        return GenerationChunk(text, count, reason, prompt_tokens=len(self.prompt))


class TransformersGenerator:
    def __init__(
        self,
        model_dir: Path,
        device: str,
        model_id: str,
        max_batch_size: int = 16,
        max_waiting_requests: int = 256,
        prefill_chunk_tokens: int = 512,
    ) -> None:
        """`prefill_chunk_tokens` bounds the prompt tokens read between two decode steps of the running
        batch, so a long prompt joining delays the others' next tokens by one chunk, not its whole length."""
        self._model_dir = model_dir
        self._device = device
        self._model_id = model_id
        self._max_batch_size = max_batch_size
        self._max_waiting_requests = max_waiting_requests
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._model: Any = None
        self._template: ChatTemplate | None = None
        self._eos_ids: set[int] = set()
        # Jobs whose consumer is still there and that the scheduler has not retired: what counts
        # against capacity. A consumer that leaves takes its job out itself, at once.
        self._running: set[_Job] = set()
        self._waiting: deque[_Job] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._scheduler: threading.Thread | None = None
        # Why the scheduler thread ended on its own; the engine is dead from then on.
        self._died_of: BaseException | None = None

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._load)
        self._scheduler = threading.Thread(
            target=self._run_scheduler, name="generator-scheduler", daemon=True
        )
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

        tokenizer = AutoTokenizer.from_pretrained(str(self._model_dir))
        dtype = torch.float32 if self._device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(str(self._model_dir), dtype=dtype)
        # transformers types the wrapped `to` as taking the model again: its stub, not our call, is off.
        self._model = model.to(self._device).eval()  # type: ignore[arg-type]
        context_tokens = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self._template = ChatTemplate(tokenizer, context_tokens)
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)
        # Warm-up: the first forward pays one-off initialisation, and it shows the cache's layer types.
        with torch.inference_mode():
            batch, _ = PaddedBatch.prefill(self._model, [tokenizer.encode("Hello")])
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
        assert self._template is not None, "the engine is not started"
        return self._template.control_tokens

    def num_running_requests(self) -> int:
        return len(self._running)

    async def check_health(self) -> None:
        """Raises Unavailable once the scheduler thread has died (nothing would ever be decoded again)."""
        if self._died_of is not None:
            raise Unavailable(f"the generator engine stopped: {type(self._died_of).__name__}")
        if self._scheduler is None or not self._scheduler.is_alive():
            raise Unavailable("the generator engine is not running")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        job = _Job(request=request, loop=asyncio.get_running_loop())
        with self._wakeup:
            if self._closing or self._died_of is not None:
                raise Unavailable("the generator engine is not running")
            if len(self._running) >= self._max_batch_size + self._max_waiting_requests:
                raise Unavailable("too many generation requests are waiting; retry later")
            self._running.add(job)
            self._waiting.append(job)
            self._wakeup.notify()
        try:
            while True:
                item = await job.chunks.get()
                if isinstance(item, RagError):
                    raise item  # the request's own fault (e.g. too long for the model), or Unavailable
                if isinstance(item, BaseException):
                    raise EngineError("generation failed") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Reached on normal end, on the consumer closing us early, and on task cancellation.
            with self._wakeup:
                if job in self._running:
                    job.aborted = True
                    self._running.discard(job)  # no longer counts against capacity, from now on
                    self._wakeup.notify()  # an idle scheduler drops a waiting job now

    # --- scheduler thread: the only code that touches the model

    def _run_scheduler(self) -> None:
        try:
            self._schedule()
        except BaseException as exc:
            log.exception("generator_scheduler_died")
            with self._wakeup:
                self._died_of = exc
                stranded = list(self._running)
                self._waiting.clear()
            self._retire(stranded, Unavailable("the generator engine stopped; retry on another replica"))

    def _schedule(self) -> None:
        import torch

        rows: list[_Row] = []
        batch: PaddedBatch | None = None
        reading: _Reading | None = None
        while True:
            rows, batch = self._drop_rows(rows, batch, [row for row in rows if row.job.aborted])
            reading = self._drop_readers(reading)
            # One group is read at a time; the next waits for it, so free slots are only offered then.
            free_slots = 0 if reading is not None else self._max_batch_size - len(rows)
            joining = self._next_joining(free_slots, idle=not rows and reading is None)
            if joining is None:
                break
            with torch.inference_mode():
                if joining:
                    reading = self._start_reading(joining)
                if reading is not None:
                    rows, batch, reading = self._read_chunk(reading, rows, batch)
                if batch is not None:  # there are rows to decode
                    rows, batch = self._decode_step(rows, batch)
        with self._wakeup:
            leftover = [row.job for row in rows] + list(self._waiting)
            leftover += reading.jobs if reading is not None else []
            self._waiting.clear()
        self._retire(leftover, Unavailable("the generator is shutting down"))

    def _next_joining(self, free_slots: int, idle: bool) -> list[_Job] | None:
        """Waiting jobs that fit in the batch, blocking while there is nothing to do; None once closing."""
        with self._wakeup:
            while True:
                for job in [job for job in self._waiting if job.aborted]:
                    self._waiting.remove(job)
                if self._closing:
                    return None
                if self._waiting or not idle:
                    break
                self._wakeup.wait()
            return [self._waiting.popleft() for _ in range(min(free_slots, len(self._waiting)))]

    def _start_reading(self, jobs: list[_Job]) -> _Reading | None:
        """Renders the prompts of `jobs` (a job whose prompt cannot be rendered fails alone) and sets up
        reading them as one group."""
        from rag_grpc.engines.padded_batch import Prefill

        assert self._template is not None
        prompts: list[list[int]] = []
        for job in list(jobs):
            try:
                prompts.append(self._template.render(job.request.messages, job.request.sampling.max_tokens))
            except Exception as exc:  # noqa: BLE001 - reported to this consumer only
                self._retire([job], exc)
                jobs.remove(job)
        if not jobs:
            return None
        return _Reading(jobs, prompts, Prefill(self._model, prompts))

    def _drop_readers(self, reading: _Reading | None) -> _Reading | None:
        """Rows whose caller left while their prompt was being read are given up before the next chunk."""
        if reading is None:
            return None
        kept = [index for index, job in enumerate(reading.jobs) if not job.aborted]
        if len(kept) == len(reading.jobs):
            return reading
        self._retire([job for job in reading.jobs if job.aborted])
        if not kept:
            return None
        reading.prefill.keep(kept)
        reading.jobs = [reading.jobs[index] for index in kept]
        reading.prompts = [reading.prompts[index] for index in kept]
        return reading

    def _read_chunk(
        self, reading: _Reading, rows: list[_Row], batch: PaddedBatch | None
    ) -> tuple[list[_Row], PaddedBatch | None, _Reading | None]:
        """Reads the group's next chunk; once its prompts are read, sends their first tokens and merges
        the unfinished rows into the batch."""
        from rag_grpc.engines.sampling import TokenSampler, sample_next_tokens

        assert self._template is not None
        jobs = reading.jobs
        try:
            # About `prefill_chunk_tokens` tokens per step whatever the group's size, at least one column.
            logits = reading.prefill.step(
                self._model, columns=max(1, self._prefill_chunk_tokens // len(jobs))
            )
            if logits is None:
                return rows, batch, reading
            samplers = [TokenSampler.for_options(job.request.sampling, self._device) for job in jobs]
            self._suppress_eos(logits, [job.request.sampling.min_tokens > 0 for job in jobs])
            first_tokens = sample_next_tokens(logits, samplers)
        except Exception:
            log.exception("generator_prefill_failed", requests=len(jobs))
            self._retire(jobs, Unavailable("the generator failed to read the prompt; retry"))
            return rows, batch, None
        joined = reading.prefill.batch()
        new_rows = [
            _Row(job, prompt, sampler, self._template)
            for job, prompt, sampler in zip(jobs, reading.prompts, samplers, strict=True)
        ]
        self._accept(new_rows, first_tokens)
        # A consumer that left during the last chunk never joins the batch.
        leaving = [row for row in new_rows if row.finished or row.job.aborted]
        self._retire([row.job for row in leaving])
        kept = [index for index, row in enumerate(new_rows) if row not in leaving]
        if not kept:
            return rows, batch, None
        if len(kept) < len(new_rows):
            joined.keep(kept)
        new_rows = [new_rows[index] for index in kept]
        if batch is None:
            return new_rows, joined, None
        batch.extend(joined)
        return rows + new_rows, batch, None

    def _decode_step(self, rows: list[_Row], batch: PaddedBatch) -> tuple[list[_Row], PaddedBatch | None]:
        import torch

        from rag_grpc.engines.padded_batch import PaddedBatch
        from rag_grpc.engines.sampling import sample_next_tokens

        last_tokens = torch.tensor([row.last_token for row in rows], dtype=torch.long, device=self._device)
        try:
            logits = batch.decode(self._model, last_tokens)
        except Exception:
            log.exception("generator_step_failed", rows=len(rows))
            try:
                batch, _ = PaddedBatch.prefill(self._model, [row.prompt + row.generated[:-1] for row in rows])
                logits = batch.decode(self._model, last_tokens)
            except Exception:
                log.exception("generator_recompute_failed", rows=len(rows))
                self._retire([row.job for row in rows], Unavailable("the generator failed mid-answer; retry"))
                return [], None
        self._suppress_eos(logits, [len(row.generated) < row.min_tokens for row in rows])
        self._accept(rows, sample_next_tokens(logits, [row.sampler for row in rows]))
        return self._drop_rows(rows, batch, [row for row in rows if row.finished])

    def _accept(self, rows: list[_Row], tokens: list[int]) -> None:
        """Every row takes its token, so its state stays whole even if its consumer has just left;
        chunks go only to consumers still there."""
        outbox: list[tuple[_Job, _Item]] = []
        for row, token in zip(rows, tokens, strict=True):
            chunk = row.accept(token, self._eos_ids)
            if chunk is not None and not row.job.aborted:
                outbox.append((row.job, chunk))
        self._send(outbox)

    def _suppress_eos(self, logits: torch.Tensor, rows: list[bool]) -> None:
        """End-of-sequence cannot be drawn by the rows still short of their min_tokens."""
        if self._eos_ids and any(rows):
            for index, suppressed in enumerate(rows):
                if suppressed:
                    logits[index, list(self._eos_ids)] = float("-inf")

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
        with self._wakeup:
            for job in jobs:
                self._running.discard(job)
        if error is not None:
            self._send([(job, error) for job in jobs if not job.aborted])

    @staticmethod
    def _send(outbox: Sequence[tuple[_Job, _Item]]) -> None:
        """Hands chunks to their consumers' event loops, one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, _Item]]] = {}
        for job, item in outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[_Job, _Item]]) -> None:
    for job, item in items:
        job.chunks.put_nowait(item)
