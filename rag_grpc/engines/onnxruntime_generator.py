"""Generator running a quantized ONNX export of the model with ONNX Runtime on CPU, batching
concurrent requests at every decode step.

The model (built by rag_grpc.engines.quantized_model with onnxruntime-genai's builder: int4 or int8
MatMulNBits weights, GroupQueryAttention with rotary embeddings inside) takes each row's key/value cache
as a buffer it writes in place (past and present bound to the same memory), and derives each row's
position and length from its attention mask. So rows of different lengths decode together with no
padding of their caches: row r's mask holds ones for its own cached tokens plus the new one.

One scheduler thread owns the session and the cache. Each step it drops rows whose consumer left
(the last row's cache moves into the hole, so rows stay contiguous), reads the prompts of waiting
requests (about `prefill_chunk_tokens` prompt tokens per step, one request at a time, into a slot of
its own, moved to the running rows once read), and decodes one token for every running row in one
call. A consumer that leaves stops counting against capacity at once and its row is gone before the
next step.

Every call multiplies at least two token rows: ONNX Runtime's int4 kernel for a single row computes
in float32 while the one for several rows quantizes activations to int8 (logits differ by up to ~4),
so a lone decoding row is paired with a scratch row and a prompt chunk never has one token. Each
request then gets the same tokens whichever requests share its steps, and seeded sampling repeats.

onnxruntime-genai's own Engine was measured and not used here: on CPU it batches statically (at most
4 requests, and a request arriving mid-batch waits for the whole batch to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import structlog

from rag_grpc.domain import EngineInfo, FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.errors import EngineError, RagError, Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    import numpy.typing as npt

    from rag_grpc.engines.sampling import TokenSampler

log = structlog.get_logger(__name__)

_Item = GenerationChunk | BaseException
# Cache buffers start this long and double when a row needs more (up to the model's context).
_MIN_CAPACITY = 256


@dataclass(eq=False)
class _Job:
    """A request as the scheduler sees it; `aborted` is set by the consumer, read by the scheduler."""

    request: GenerationRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    aborted: bool = False


class _Row:
    """One request in the cache. Between steps the cache holds `prompt + generated[:-1]` (`cached`
    tokens) and the next step feeds `generated[-1]`; while its prompt is read, `generated` is empty."""

    def __init__(self, job: _Job, sampler: TokenSampler, template: ChatTemplate) -> None:
        self.job = job
        self.prompt = job.prompt
        self.sampler = sampler
        self.generated: list[int] = []
        self.cached = 0
        self.finished = False
        sampling = job.request.sampling
        self.min_tokens = sampling.min_tokens
        self._max_tokens = sampling.max_tokens
        self._decoder = IncrementalDecoder(template.decode)
        self._stop_filter = StopSequenceFilter(sampling.stop)
        self._unreported_tokens = 0

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


class _KvCache:
    """Every layer's key and value buffers, [slots, kv_heads, capacity, head_size] float32 each: slots
    0..max_batch_size-1 for running rows, then a scratch slot, then the slot of the prompt being read."""

    def __init__(
        self, names: list[tuple[str, str]], slots: int, kv_heads: int, head_size: int, limit: int
    ) -> None:
        # (past input, present output) per buffer
        self.names = names
        self._shape = (slots, kv_heads, head_size)
        self._limit = limit
        self.buffers: list[npt.NDArray[np.float32]] = []
        self.capacity = 0
        self.reset()

    def reset(self) -> None:
        """Back to the smallest buffers (when no row is left, so a burst of long prompts is not kept)."""
        if self.capacity != _MIN_CAPACITY:
            self.capacity = min(_MIN_CAPACITY, self._limit)
            self.buffers = [self._empty(self.capacity) for _ in self.names]

    def ensure(self, length: int) -> None:
        """Room for `length` tokens in every row, keeping what the rows hold."""
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self._limit)
        grown = []
        for old in self.buffers:
            new = self._empty(capacity)
            new[:, :, : self.capacity] = old
            grown.append(new)
        self.buffers, self.capacity = grown, capacity

    def move(self, source: int, target: int, length: int) -> None:
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]

    def _empty(self, capacity: int) -> npt.NDArray[np.float32]:
        slots, kv_heads, head_size = self._shape
        return np.zeros((slots, kv_heads, capacity, head_size), dtype=np.float32)


class OnnxRuntimeGenerator:
    def __init__(
        self,
        model_dir: Path,
        model_id: str,
        precision: str,
        max_batch_size: int = 16,
        max_waiting_requests: int = 256,
        prefill_chunk_tokens: int = 512,
        threads: int = 0,
    ) -> None:
        """`model_dir` is the builder's output (model.onnx, genai_config.json, tokenizer files).
        `threads` is ONNX Runtime's intra-op thread count (0: one per physical core)."""
        self._model_dir = model_dir
        self._model_id = model_id
        self._precision = precision
        self._max_batch_size = max_batch_size
        self._max_waiting_requests = max_waiting_requests
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._threads = threads
        self._session: Any = None
        self._cache: _KvCache | None = None
        self._template: ChatTemplate | None = None
        self._eos_ids: set[int] = set()
        self._running: set[_Job] = set()
        self._waiting: deque[_Job] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._scheduler: threading.Thread | None = None
        self._died_of: BaseException | None = None

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._load)
        self._scheduler = threading.Thread(
            target=self._run_scheduler, name="onnxruntime-generator", daemon=True
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
        import onnxruntime as ort
        from transformers import AutoTokenizer

        config = json.loads((self._model_dir / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        context = int(config.get("context_length", 2048))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Spinning threads wait for work by burning CPU; next to other busy processes (the embedder,
        # the gRPC server) a decode step took twice as long with it on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self._model_dir / decoder["filename"]), options, providers=["CPUExecutionProvider"]
        )
        names = decoder["inputs"]
        outputs = decoder["outputs"]
        self._input_ids, self._attention_mask = names["input_ids"], names["attention_mask"]
        self._logits = outputs["logits"]
        buffers = []
        for layer in range(int(decoder["num_hidden_layers"])):
            buffers.append((names["past_key_names"] % layer, outputs["present_key_names"] % layer))
            buffers.append((names["past_value_names"] % layer, outputs["present_value_names"] % layer))
        self._reader_slot = self._max_batch_size + 1
        self._cache = _KvCache(
            buffers,
            self._max_batch_size + 2,
            int(decoder["num_key_value_heads"]),
            int(decoder["head_size"]),
            context,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(self._model_dir))
        self._template = ChatTemplate(tokenizer, context)
        eos = config.get("eos_token_id")
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)
        # Warm-up: the first run pays one-off initialisation.
        self._run(0, [[int(t) for t in tokenizer.encode("Hello, world")]], [0])
        log.info(
            "onnxruntime_generator_ready", model=self._model_id, precision=self._precision, context=context
        )

    @property
    def info(self) -> EngineInfo:
        # The precision travels in the backend name until GeneratorInfo has a field of its own.
        return EngineInfo(backend=f"onnxruntime-{self._precision}", model=self._model_id, device="cpu")

    @property
    def control_tokens(self) -> Sequence[str]:
        assert self._template is not None, "the engine is not started"
        return self._template.control_tokens

    def num_running_requests(self) -> int:
        return len(self._running)

    async def check_health(self) -> None:
        if self._died_of is not None:
            raise Unavailable(f"the generator engine stopped: {type(self._died_of).__name__}")
        if self._scheduler is None or not self._scheduler.is_alive():
            raise Unavailable("the generator engine is not running")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        template = self._template
        if template is None:
            raise Unavailable("the generator engine is not running")
        try:
            prompt = await asyncio.to_thread(template.render, request.messages, request.sampling.max_tokens)
        except RagError:
            raise  # InvalidArgument for a prompt over the context
        except Exception as exc:
            raise EngineError("chat template rendering failed") from exc
        job = _Job(request=request, prompt=prompt, loop=asyncio.get_running_loop())
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
                    raise item
                if isinstance(item, BaseException):
                    raise EngineError("generation failed") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Normal end, the consumer closing us early, or task cancellation.
            with self._wakeup:
                if job in self._running:
                    job.aborted = True
                    self._running.discard(job)
                    self._wakeup.notify()

    # --- scheduler thread: the only code that touches the session and the cache

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
        assert self._cache is not None
        rows: list[_Row] = []  # decoding, in cache slots 0..len(rows)-1
        reader: _Row | None = None  # prompt being read, in the reader slot
        while True:
            rows, reader = self._drop(rows, reader)
            if not self._wait_for_work(busy=bool(rows) or reader is not None):
                break
            if not rows and reader is None:
                self._cache.reset()
            rows, reader = self._read_prompts(rows, reader)
            if rows:
                rows = self._decode_step(rows)
        with self._wakeup:
            leftover = [row.job for row in rows] + list(self._waiting)
            leftover += [reader.job] if reader is not None else []
            self._waiting.clear()
        self._retire(leftover, Unavailable("the generator is shutting down"))

    def _wait_for_work(self, busy: bool) -> bool:
        """Blocks while there is nothing to do; False once closing."""
        with self._wakeup:
            while True:
                while self._waiting and self._waiting[0].aborted:
                    self._waiting.popleft()
                if self._closing:
                    return False
                if busy or self._waiting:
                    return True
                self._wakeup.wait()

    def _next_job(self) -> _Job | None:
        with self._wakeup:
            while self._waiting:
                job = self._waiting.popleft()
                if not job.aborted:
                    return job
        return None

    def _drop(self, rows: list[_Row], reader: _Row | None) -> tuple[list[_Row], _Row | None]:
        """Retires rows whose consumer left or that finished; the last row's cache fills each hole."""
        assert self._cache is not None
        leaving = [row for row in rows if row.job.aborted or row.finished]
        if reader is not None and reader.job.aborted:
            self._retire([reader.job])
            reader = None
        if not leaving:
            return rows, reader
        self._retire([row.job for row in leaving])
        for row in leaving:
            slot, last = rows.index(row), len(rows) - 1
            if slot != last:
                self._cache.move(last, slot, rows[last].cached)
                rows[slot] = rows[last]
            rows.pop()
        return rows, reader

    def _read_prompts(self, rows: list[_Row], reader: _Row | None) -> tuple[list[_Row], _Row | None]:
        """Reads up to `prefill_chunk_tokens` prompt tokens, request after request; a request whose
        prompt is read takes its first token and joins the running rows."""
        from rag_grpc.engines.sampling import TokenSampler

        assert self._template is not None and self._cache is not None
        budget = self._prefill_chunk_tokens
        while budget > 0:
            if reader is None:
                if len(rows) >= self._max_batch_size:
                    break
                job = self._next_job()
                if job is None:
                    break
                reader = _Row(job, TokenSampler.for_options(job.request.sampling, "cpu"), self._template)
            left = len(reader.prompt) - reader.cached
            take = min(budget, left)
            if left - take == 1:
                take -= 1  # never a one-token chunk (see the module's docstring)
            if take < 2 <= left:
                break  # the rest next step
            try:
                chunk = reader.prompt[reader.cached : reader.cached + take]
                logits = self._run(self._reader_slot, [chunk], [reader.cached])
            except Exception:
                log.exception("generator_prefill_failed", request_id=reader.job.request.request_id)
                self._retire([reader.job], Unavailable("the generator failed to read the prompt; retry"))
                reader = None
                continue
            budget -= take
            reader.cached += take
            if reader.cached < len(reader.prompt):
                continue  # the rest next step
            self._accept([reader], logits)
            if reader.finished or reader.job.aborted:
                self._retire([reader.job])
            else:
                self._cache.move(self._reader_slot, len(rows), reader.cached)
                rows.append(reader)
            reader = None
        return rows, reader

    def _decode_step(self, rows: list[_Row]) -> list[_Row]:
        try:
            logits = self._run(0, [[row.generated[-1]] for row in rows], [row.cached for row in rows])
        except Exception:
            log.exception("generator_step_failed", rows=len(rows))
            self._retire([row.job for row in rows], Unavailable("the generator failed mid-answer; retry"))
            for row in rows:
                row.finished = True  # out at the next _drop, which also keeps a reader's cache in place
            return rows
        for row in rows:
            row.cached += 1
        self._accept(rows, logits)
        return rows  # finished rows leave at the next _drop

    def _run(self, first_slot: int, tokens: list[list[int]], cached: list[int]) -> npt.NDArray[np.float32]:
        """One model call over cache slots first_slot.. (one per row of `tokens`, all the same length:
        one token per row, or one row's prompt chunk); returns each row's last logits [rows, vocab]."""
        import onnxruntime as ort

        assert self._cache is not None
        real_rows = len(tokens)
        if real_rows * len(tokens[0]) == 1:
            # A scratch row in the free slot after the running rows (see the module's docstring).
            tokens, cached = [*tokens, tokens[0]], [*cached, 0]
        rows, width = len(tokens), len(tokens[0])
        total = max(cached) + width
        self._cache.ensure(total)
        # Each row's mask: ones over its cached tokens and the new ones, zeros after (rows are ragged).
        mask = (np.arange(total)[None, :] < (np.asarray(cached)[:, None] + width)).astype(np.int64)
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._input_ids, np.asarray(tokens, dtype=np.int64))
        binding.bind_cpu_input(self._attention_mask, mask)
        binding.bind_output(self._logits)
        for (past, present), buffer in zip(self._cache.names, self._cache.buffers, strict=True):
            # Past and present share memory: the model writes the new keys and values in place.
            value = ort.OrtValue.ortvalue_from_numpy(buffer[first_slot : first_slot + rows])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self._session.run_with_iobinding(binding)
        logits: npt.NDArray[np.float32] = binding.get_outputs()[0].numpy()
        return np.ascontiguousarray(logits[:real_rows, -1, :])

    def _accept(self, rows: list[_Row], logits: npt.NDArray[np.float32]) -> None:
        """Samples every row's next token (end-of-sequence masked for rows short of min_tokens); chunks go
        only to consumers still there."""
        import torch

        from rag_grpc.engines.sampling import sample_next_tokens

        scores = torch.from_numpy(logits)
        suppressed = [index for index, row in enumerate(rows) if len(row.generated) < row.min_tokens]
        if suppressed and self._eos_ids:
            for index in suppressed:
                scores[index, list(self._eos_ids)] = float("-inf")
        tokens = sample_next_tokens(scores, [row.sampler for row in rows])
        outbox: list[tuple[_Job, _Item]] = []
        for row, token in zip(rows, tokens, strict=True):
            chunk = row.accept(token, self._eos_ids)
            if chunk is not None and not row.job.aborted:
                outbox.append((row.job, chunk))
        self._send(outbox)

    def _retire(self, jobs: list[_Job], error: BaseException | None = None) -> None:
        # Uncounted before the consumer can hear of it, so a caller that saw its stream end sees it gone.
        with self._wakeup:
            for job in jobs:
                self._running.discard(job)
        if error is not None:
            self._send([(job, error) for job in jobs if not job.aborted])

    @staticmethod
    def _send(outbox: Sequence[tuple[_Job, _Item]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, _Item]]] = {}
        for job, item in outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[_Job, _Item]]) -> None:
    for job, item in items:
        job.chunks.put_nowait(item)
