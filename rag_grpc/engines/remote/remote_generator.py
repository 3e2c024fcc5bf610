"""The Generator over a pool of remote workers, each reached by the protocol its URL names."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import structlog
from pydantic import SecretStr

from rag_grpc.domain import EndpointInfo, EngineInfo, GenerationChunk, GenerationRequest
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.engines.remote.openai_worker import OpenAIWorker
from rag_grpc.engines.remote.pool import EndpointPool, EndpointStatus
from rag_grpc.engines.remote.vllm_grpc_worker import VllmGrpcWorker
from rag_grpc.engines.remote.worker import Worker, WorkerFailure
from rag_grpc.errors import Unavailable

log = structlog.get_logger(__name__)


class RemoteGenerator:
    def __init__(
        self,
        endpoints: Sequence[str],
        tokenizer_dir: Path | str,
        *,
        api_key: SecretStr | None = None,
        served_model: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        eject_after_failures: int = 3,
        probe_interval_s: float = 1.0,
        max_attempts: int = 2,
    ) -> None:
        self._urls = list(endpoints)
        self._tokenizer_dir = tokenizer_dir
        self._api_key = api_key
        self._served_model = served_model
        self._timeouts = {"connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s}
        self._eject_after_failures = eject_after_failures
        self._probe_interval_s = probe_interval_s
        self._max_attempts = max_attempts
        self._model = served_model or ""
        self._template: ChatTemplate | None = None
        self._pool: EndpointPool | None = None

    async def __aenter__(self) -> Self:
        # The local tokenizer renders prompts for token-id workers and names the control tokens that
        # retrieved text must not carry, whichever protocol the workers speak.
        from transformers import AutoTokenizer

        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(self._tokenizer_dir))
        self._template = ChatTemplate(tokenizer)
        pool = EndpointPool(
            [self._worker(url, self._template) for url in self._urls],
            eject_after_failures=self._eject_after_failures,
            probe_interval_s=self._probe_interval_s,
        )
        try:
            model = await pool.start()
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._model = self._served_model or model.served_name
        log.info("generator_endpoints_ready", model=self._model, healthy=[s.url for s in pool.healthy()])
        return self

    def _worker(self, url: str, template: ChatTemplate) -> Worker:
        if url.startswith("grpc://"):
            return VllmGrpcWorker(url, template, **self._timeouts)
        return OpenAIWorker(url, self._api_key, self._served_model, **self._timeouts)

    async def __aexit__(self, *exc_info: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def info(self) -> EngineInfo:
        endpoints = tuple(
            EndpointInfo(_without_credentials(s.url), s.healthy, s.in_flight, s.last_problem)
            for s in self.endpoints
        )
        return EngineInfo(backend="remote", model=self._model, device="remote", endpoints=endpoints)

    @property
    def endpoints(self) -> list[EndpointStatus]:
        return [] if self._pool is None else list(self._pool.status.values())

    @property
    def control_tokens(self) -> Sequence[str]:
        assert self._template is not None, "the engine is not started"
        return self._template.control_tokens

    def num_running_requests(self) -> int:
        return sum(s.in_flight for s in self.endpoints)

    async def check_health(self) -> None:
        if self._pool is None:
            raise Unavailable("the remote generator is not started")
        if not self._pool.healthy():
            raise Unavailable("no generator endpoint is healthy")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        pool = self._pool
        if pool is None:
            raise Unavailable("the remote generator is not started")
        tried: set[str] = set()
        while True:
            endpoint = pool.choose(tried)
            if endpoint is None:
                raise Unavailable("no healthy generator endpoint can take the request")
            tried.add(endpoint.url)
            # Once text reached the caller the answer cannot move: another worker would not continue it.
            sent = False
            endpoint.in_flight += 1
            endpoint.requests += 1
            started = time.monotonic()
            try:
                async with contextlib.aclosing(pool.workers[endpoint.url].generate(request)) as chunks:
                    async for chunk in chunks:
                        sent = True
                        yield chunk
                pool.succeeded(endpoint)
                return
            except WorkerFailure as failure:
                pool.failed(endpoint, failure.problem)
                retry = not sent and len(tried) < self._max_attempts
                log.warning(
                    "generator_endpoint_failed",
                    endpoint=endpoint.url,
                    request_id=request.request_id,
                    problem=failure.problem,
                    retrying=retry,
                )
                if not retry:
                    raise Unavailable("the generator worker failed; retry the call") from None
            finally:
                endpoint.in_flight -= 1
                endpoint.observe(time.monotonic() - started)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
