"""A client of one worker that speaks vLLM's gRPC protocol (`vllm.grpc.engine.VllmEngine`).

vLLM's gRPC server and SMG's gRPC front speak it. Prompts go as token ids rendered with the model's
chat template here, answers come back as token ids and are detokenized here, as SMG does: the same
ChatTemplate and streaming decoder the in-process engines use, so stop sequences are cut the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import structlog

from rag_grpc.domain import FinishReason, GenerationChunk, GenerationRequest, SamplingOptions
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.engines.remote.worker import WorkerFailure, WorkerModel, time_left
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.errors import DeadlineExceeded, InvalidArgument
from rag_grpc.vllm_protocol import vllm_engine_pb2 as pb
from rag_grpc.vllm_protocol import vllm_engine_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}
_INT32_MAX = 2**31 - 1
# Statuses that say the request, not the worker, is at fault: another worker would refuse it too.
_CALLER_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


class VllmGrpcWorker:
    def __init__(
        self, url: str, template: ChatTemplate, *, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self.url = url
        self._template = template
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        # Long answers go quiet between tokens; keepalive pings must not be refused as abuse (vLLM's
        # launcher allows them every 10 s).
        self._channel = grpc.aio.insecure_channel(
            url.removeprefix("grpc://"),
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                # gRPC's reconnect backoff grows to 120 s while a worker is away (past 15 s within the half
                # minute a vLLM restart takes), and probes fail fast meanwhile; capped at 2 s, a restarted
                # worker rejoins the pool within seconds of being back.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self._stub = pb_grpc.VllmEngineStub(self._channel)
        # Fire-and-forget aborts, kept referenced until done.
        self._aborts: set[asyncio.Task[None]] = set()
        self._vocab = len(template.tokenizer)

    async def connect(self) -> WorkerModel:
        info = await self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest())
        vocab = len(self._template.tokenizer)
        if info.vocab_size and info.vocab_size < vocab:
            raise WorkerFailure(
                self.url,
                f"serves {info.served_model_name or info.model_path} with {info.vocab_size} token ids; "
                f"the local tokenizer has {vocab}: set generator_model/generator_tokenizer to its model",
            )
        self._vocab = max(vocab, info.vocab_size)
        return WorkerModel(
            served_name=info.served_model_name or info.model_path,
            max_context_tokens=info.max_context_length or None,
        )

    async def probe(self) -> int | None:
        health = await self._unary(self._stub.HealthCheck, pb.HealthCheckRequest())
        if not health.healthy:
            raise WorkerFailure(self.url, f"reports unhealthy: {health.message}")
        loads = await self._unary(self._stub.GetLoads, pb.GetLoadsRequest())
        return int(sum(load.num_running_reqs + load.num_waiting_reqs for load in loads.loads))

    async def _unary(self, method: Any, message: Any) -> Any:
        try:
            return await method(message, timeout=self._connect_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise WorkerFailure(self.url, f"{exc.code().name}: {exc.details()}") from None

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        prompt = await asyncio.to_thread(self._template.render, request.messages, request.sampling.max_tokens)
        message = pb.GenerateRequest(
            request_id=request.request_id,
            tokenized=pb.TokenizedInput(input_ids=prompt),
            sampling_params=self._sampling_params(request.sampling),
            stream=True,
        )
        decoder = IncrementalDecoder(self._template.decode)
        stop = StopSequenceFilter(request.sampling.stop)
        call = self._stub.Generate(message, timeout=time_left(request))
        finished = False
        pending = 0
        try:
            while True:
                response = await self._next(call)
                kind = response.WhichOneof("response")
                if kind == "chunk":
                    ids = list(response.chunk.token_ids)
                    pending += len(ids)
                    text = stop.push(self._decode(decoder, ids))
                    if text:
                        yield GenerationChunk(text, pending)
                        pending = 0
                elif kind == "complete":
                    reason = self._finish_reason(response.complete.finish_reason)
                    if stop.stopped:
                        reason = FinishReason.STOP
                    finished = True
                    yield GenerationChunk(stop.flush(), pending, reason, len(prompt))
                    return
                else:
                    raise WorkerFailure(self.url, "sent a Generate message with neither chunk nor complete")
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, request) from None
        finally:
            if not finished:
                call.cancel()  # vLLM's servicer aborts the engine request when its handler is cancelled
                self._abort_later(request.request_id)

    async def _next(self, call: Any) -> Any:
        try:
            response = await asyncio.wait_for(call.read(), self._read_timeout_s)
        except TimeoutError:
            raise WorkerFailure(self.url, f"sent nothing for {self._read_timeout_s:g} s") from None
        if response is grpc.aio.EOF:
            raise WorkerFailure(self.url, "ended the stream before the answer finished")
        return response

    def _decode(self, decoder: IncrementalDecoder, ids: list[int]) -> str:
        if any(i >= self._vocab for i in ids):
            raise WorkerFailure(self.url, f"sent token ids outside the vocabulary ({self._vocab})")
        return decoder.push(ids)

    def _finish_reason(self, name: str) -> FinishReason:
        reason = _FINISH_REASONS.get(name)
        if reason is None:  # "error", or a name this client does not know
            raise WorkerFailure(self.url, f"finished the request with {name!r}")
        return reason

    def _error(self, exc: grpc.aio.AioRpcError, request: GenerationRequest) -> Exception:
        code, details = exc.code(), exc.details() or ""
        if code in _CALLER_FAULTS:
            return InvalidArgument("prompt", f"the generator worker refused it: {details[:300]}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and request.deadline is not None:
            return DeadlineExceeded("the deadline passed while the generator worker was answering")
        return WorkerFailure(self.url, f"{code.name}: {details[:300]}")

    def _abort_later(self, request_id: str) -> None:
        # Cancelling the call is the abort; this repeats it out of band (as SMG does) without making the
        # caller's cancellation wait for another round trip.
        async def abort() -> None:
            try:
                await self._stub.Abort(
                    pb.AbortRequest(request_ids=[request_id]), timeout=self._connect_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "generator_abort_failed", endpoint=self.url, request_id=request_id, code=exc.code().name
                )

        task = asyncio.ensure_future(abort())
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    def _sampling_params(self, sampling: SamplingOptions) -> Any:
        params = pb.SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            min_tokens=sampling.min_tokens,
            stop=list(sampling.stop),
            skip_special_tokens=True,
        )
        if sampling.seed is not None:
            params.seed = sampling.seed % _INT32_MAX  # the protocol's seed is an int32
        return params
