"""A client of one OpenAI-compatible chat completions endpoint, through the `openai` SDK.

vLLM's OpenAI server, SGLang, trtllm-serve, TGI, llama.cpp's server, SMG's HTTP front and the OpenAI
API all take the same streamed request. The worker renders the chat template; stop sequences are cut
by the worker. Closing the stream is the cancel: vLLM aborts a request whose client disconnected.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from rag_grpc.domain import FinishReason, GenerationChunk, GenerationRequest
from rag_grpc.engines.remote.worker import WorkerFailure, WorkerModel, time_left
from rag_grpc.errors import InvalidArgument

log = structlog.get_logger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def _sdk() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError(
            "http(s):// generator endpoints need openai: pip install 'rag-grpc[remote]'"
        ) from exc
    return openai


class OpenAIWorker:
    def __init__(
        self,
        url: str,
        api_key: SecretStr | None,
        served_model: str | None,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self.url = url
        self._openai = _sdk()
        self._served_model = served_model
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        # Retries are the pool's business (only before the first token, and on another endpoint).
        self._client = self._openai.AsyncOpenAI(
            base_url=url,
            api_key=api_key.get_secret_value() if api_key else "unused",
            timeout=self._timeout,
            max_retries=0,
        )

    async def connect(self) -> WorkerModel:
        models = await self._models()
        if self._served_model is None:
            if not models:
                raise WorkerFailure(self.url, "lists no models; set generator_served_model")
            self._served_model = models[0]
        return WorkerModel(served_name=self._served_model)

    async def probe(self) -> int | None:
        await self._models()
        return None  # the chat API reports no load; the pool counts what it sent

    async def _models(self) -> list[str]:
        try:
            page = await self._client.models.list(timeout=self._timeout.connect)
        except self._openai.OpenAIError as exc:
            raise WorkerFailure(self.url, _describe(exc)) from None
        return [model.id for model in page.data]

    async def close(self) -> None:
        await self._client.close()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk]:
        time_left(request)  # the caller's deadline is enforced by closing this stream when it passes
        counted = 0
        reason: FinishReason | None = None
        usage: Any = None
        try:
            stream = await self._client.chat.completions.create(**self._create_options(request))
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        text = (choice.delta.content or "") if choice.delta else ""
                        if text:
                            counted += 1
                            yield GenerationChunk(text, 1)
                        if choice.finish_reason is not None:
                            reason = self._finish_reason(choice.finish_reason)
        except self._openai.BadRequestError as exc:
            raise InvalidArgument("prompt", f"the generator worker refused it: {_describe(exc)}") from None
        except self._openai.APITimeoutError:
            raise WorkerFailure(self.url, f"sent nothing for {self._timeout.read:g} s") from None
        except self._openai.OpenAIError as exc:
            raise WorkerFailure(self.url, _describe(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # a malformed event the SDK could not parse
            raise WorkerFailure(self.url, f"sent a malformed event ({type(exc).__name__})") from None
        if reason is None:
            raise WorkerFailure(self.url, "ended the stream before the answer finished")
        # Usage is the worker's count; deltas must add up to it, so the last chunk carries the rest.
        completion = max(counted, usage.completion_tokens) if usage is not None else counted
        prompt_tokens = usage.prompt_tokens if usage is not None else 0
        yield GenerationChunk("", completion - counted, reason, prompt_tokens)

    def _create_options(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        # Parameters outside OpenAI's schema only when asked for: the OpenAI API refuses unknown ones.
        extra: dict[str, int] = {}
        if sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        if sampling.min_tokens > 0:
            extra["min_tokens"] = sampling.min_tokens
        return {
            "model": self._served_model or "",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stop": list(sampling.stop) or None,
            "extra_body": extra or None,
            # vLLM takes it as its own request id (--enable-request-id-headers): one id in both logs.
            "extra_headers": {"X-Request-Id": request.request_id},
        }

    def _finish_reason(self, name: str) -> FinishReason:
        reason = _FINISH_REASONS.get(name)
        if reason is None:
            raise WorkerFailure(self.url, f"finished the request with {name!r}")
        return reason


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc)[:300]
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"
