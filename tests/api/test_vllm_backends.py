"""The service on real vLLM: in process (vLLM for CPU), and on remote vLLM workers over its gRPC
protocol and over the OpenAI API, through the public gRPC API.

Workers are real (tests/vllm_workers.py); faults are real too: a worker is SIGKILLed mid-answer and
restarted, or SIGSTOPped to hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from rag_grpc.engines import Engines
from rag_grpc.engines.remote import RemoteGenerator
from rag_grpc.engines.vllm_generator import VllmGenerator
from rag_grpc.errors import Unavailable
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import RunningServer, serving
from tests.conftest import Stubs
from tests.engines.test_generator_contract import worker_running
from tests.helpers import collect, doc
from tests.vllm_workers import Fleet, Protocol

pytestmark = pytest.mark.vllm_fleet

PROTOCOLS: list[Protocol] = ["grpc", "openai"]
FACT = "The secret password of the Zorblax Society is 'purple-harmonica-42'."
LONG = pb.SamplingParams(max_tokens=300, min_tokens=300)


def _text(messages: list[pb.GenerateResponse]) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


@asynccontextmanager
async def remote_server(
    engines: Engines, settings: Settings, model_dir: Path, urls: list[str], **pool: Any
) -> AsyncIterator[tuple[RunningServer, RemoteGenerator]]:
    """A server whose generator is a pool over `urls`, probing every 0.2 s."""
    options = {"probe_interval_s": 0.2, "eject_after_failures": 2, **pool}
    async with AsyncExitStack() as stack:
        remote = await stack.enter_async_context(RemoteGenerator(urls, model_dir, **options))
        on_remote = Engines(engines.embedder, engines.vector_store, {remote.info.model: remote})
        running = await stack.enter_async_context(serving(on_remote, settings, health_check_interval_s=0.2))
        yield running, remote


async def fact_answer(stubs: Stubs, tag: str) -> list[pb.GenerateResponse]:
    await stubs.documents.Upsert(
        pb.UpsertRequest(
            documents=[
                doc("zorblax-secret", FACT, test=tag),
                doc("zorblax-noise", "Tomatoes are botanically fruits.", test=tag),
            ]
        )
    )
    return await collect(
        stubs.generate.Generate(
            pb.GenerateRequest(
                prompt="What is the secret password of the Zorblax Society?",
                retrieval=pb.RetrievalOptions(top_k=1, filter={"test": tag}),
                sampling=pb.SamplingParams(max_tokens=40),
            )
        )
    )


def assert_grounded(messages: list[pb.GenerateResponse]) -> None:
    assert messages[0].WhichOneof("event") == "sources"
    assert [h.id for h in messages[0].sources.hits] == ["zorblax-secret"]
    assert {m.WhichOneof("event") for m in messages[1:-1]} == {"delta"}
    assert "purple-harmonica-42" in _text(messages)
    final = messages[-1].final
    assert final.usage.completion_tokens == sum(m.delta.token_count for m in messages if m.HasField("delta"))


async def health_of(server: RunningServer, service: str = "") -> int:
    reply = await server.stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def until(condition: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        await asyncio.sleep(0.1)


# --- vLLM in process


async def test_in_process_vllm_answers_grounded_questions(
    engines: Engines, settings: Settings, vllm_generator: VllmGenerator, isolated_tag: str
) -> None:
    on_vllm = Engines(engines.embedder, engines.vector_store, {vllm_generator.info.model: vllm_generator})
    async with serving(on_vllm, settings) as server:
        assert_grounded(await fact_answer(server.stubs, isolated_tag))
        info = await server.stubs.info.Info(pb.InfoRequest())
        assert (info.generators[0].backend, info.generators[0].device) == ("vllm", "cpu")


async def test_in_process_vllm_ends_a_stream_at_the_callers_deadline(
    engines: Engines, settings: Settings, vllm_generator: VllmGenerator
) -> None:
    on_vllm = Engines(engines.embedder, engines.vector_store, {vllm_generator.info.model: vllm_generator})
    async with serving(on_vllm, settings) as server:
        call = server.stubs.generate.Generate(
            pb.GenerateRequest(prompt="Tell a story.", sampling=LONG), timeout=1.5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(call)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: _zero(vllm_generator.num_running_requests), 2.0, "vLLM dropping the request")


async def _zero(count: Any) -> bool:
    return bool(await asyncio.to_thread(count) == 0)


# --- remote workers


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_remote_workers_answer_grounded_questions(
    protocol: Protocol,
    vllm_fleet: Fleet,
    engines: Engines,
    settings: Settings,
    generator_model_dir: Path,
    isolated_tag: str,
) -> None:
    urls = [w.url for w in vllm_fleet.of(protocol)]
    async with remote_server(engines, settings, generator_model_dir, urls) as (server, _):
        assert_grounded(await fact_answer(server.stubs, isolated_tag))
        info = await server.stubs.info.Info(pb.InfoRequest())
        endpoints = info.generators[0].endpoints
        assert info.generators[0].backend == "remote"
        assert [(e.url, e.healthy) for e in endpoints] == [(url, True) for url in urls]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_cancel_mid_stream_frees_the_worker_within_two_seconds(
    protocol: Protocol, vllm_fleet: Fleet, engines: Engines, settings: Settings, generator_model_dir: Path
) -> None:
    worker = vllm_fleet.of(protocol)[0]
    running = worker_running(worker)
    async with remote_server(engines, settings, generator_model_dir, [worker.url]) as (server, _):
        call = server.stubs.generate.Generate(pb.GenerateRequest(prompt="Tell a story.", sampling=LONG))
        deltas = 0
        async for message in call:
            deltas += message.HasField("delta")
            if deltas == 3:
                break
        assert await asyncio.to_thread(running) == 1
        call.cancel()
        await until(lambda: _zero(running), 2.0, "the worker dropping the cancelled request")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_hung_worker_ends_answers_unavailable_or_at_the_callers_deadline(
    protocol: Protocol, vllm_fleet: Fleet, engines: Engines, settings: Settings, generator_model_dir: Path
) -> None:
    worker = vllm_fleet.of(protocol)[1]
    assert worker.process is not None
    async with (
        remote_server(engines, settings, generator_model_dir, [worker.url], read_timeout_s=1.0) as (
            impatient,
            _,
        ),
        remote_server(engines, settings, generator_model_dir, [worker.url]) as (patient, _),
    ):
        hung = impatient.stubs.generate.Generate(pb.GenerateRequest(prompt="Tell a story.", sampling=LONG))
        deadlined = patient.stubs.generate.Generate(
            pb.GenerateRequest(prompt="Tell a story.", sampling=LONG), timeout=4.0
        )
        await anext(aiter(hung))
        await anext(aiter(deadlined))
        os.killpg(worker.process.pid, signal.SIGSTOP)
        try:
            stalled, late = await asyncio.gather(_finish(hung), _finish(deadlined))
        finally:
            os.killpg(worker.process.pid, signal.SIGCONT)
        # The pool's read timeout (1 s) gives up on the worker; the caller's deadline (4 s) ends the other.
        assert stalled[0] == grpc.StatusCode.UNAVAILABLE
        assert late[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: _zero(worker_running(worker)), 5.0, "the resumed worker dropping both requests")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_losing_a_worker_mid_answer_fails_only_its_stream_and_it_is_probed_back(
    protocol: Protocol, vllm_fleet: Fleet, engines: Engines, settings: Settings, generator_model_dir: Path
) -> None:
    worker_a, worker_b = vllm_fleet.of(protocol)
    urls = [worker_a.url, worker_b.url]
    async with (
        remote_server(engines, settings, generator_model_dir, urls) as (both, pool),
        remote_server(engines, settings, generator_model_dir, [worker_a.url]) as (only_a, _),
    ):
        # Streams until each worker has one: least outstanding work sends the second to the other worker
        # unless a stale load report says otherwise, so a few more are allowed.
        streams = []
        while len(streams) < 4 and not all(s.in_flight for s in pool.endpoints):
            stream = both.stubs.generate.Generate(pb.GenerateRequest(prompt="Tell a story.", sampling=LONG))
            assert (await anext(aiter(stream))).WhichOneof("event") == "delta"
            streams.append(stream)
        on = {s.url: s.in_flight for s in pool.endpoints}
        assert on[worker_a.url] >= 1 and on[worker_b.url] >= 1, on

        worker_a.kill()
        results = await asyncio.gather(*(_finish(s) for s in streams))
        codes = [code for code, _ in results]
        # A's streams fail (no retry after their first token, no spliced text); B's finish.
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == on[worker_a.url]
        assert codes.count(grpc.StatusCode.OK) == on[worker_b.url]
        for code, messages in results:
            if code == grpc.StatusCode.UNAVAILABLE:
                assert not any(m.HasField("final") for m in messages)
        await until(
            lambda: _equals(
                health_of(only_a, "rag_grpc.v1.GenerateService"), health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            5.0,
            "NOT_SERVING with no healthy worker",
        )
        await until(lambda: _false(_healthy(pool, worker_a.url)), 5.0, "worker A ejected")
        labels = {"model": pool.info.model, "endpoint": worker_a.url}
        assert both.sample("rag_generator_endpoint_healthy", **labels) == 0
        assert both.sample("rag_generator_endpoint_ejections_total", **labels) >= 1
        assert both.sample("rag_generator_endpoint_failures_total", **labels) >= 1
        # A pool whose only worker is down cannot start, and says which endpoint it could not reach.
        with pytest.raises(Unavailable, match=worker_a.url.replace(".", r"\.")):
            async with RemoteGenerator([worker_a.url], generator_model_dir, connect_timeout_s=2.0):
                pass

        for _ in range(4):  # later calls succeed on B, retried there before any token if they tried A
            messages = await collect(
                both.stubs.generate.Generate(
                    pb.GenerateRequest(prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=8))
                )
            )
            assert messages[-1].HasField("final")

        worker_a.launch()
        await asyncio.to_thread(worker_a.wait_ready)
        await until(lambda: _healthy(pool, worker_a.url), 10.0, "the restarted worker back in the pool")
        await until(
            lambda: _equals(
                health_of(only_a, "rag_grpc.v1.GenerateService"), health_pb2.HealthCheckResponse.SERVING
            ),
            5.0,
            "SERVING again",
        )
        before = {s.url: s.requests for s in pool.endpoints}
        await asyncio.gather(
            *(
                collect(
                    both.stubs.generate.Generate(
                        pb.GenerateRequest(prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=8))
                    )
                )
                for _ in range(4)
            )
        )
        after = {s.url: s.requests for s in pool.endpoints}
        assert after[worker_a.url] > before[worker_a.url]


async def _finish(call: Any) -> tuple[grpc.StatusCode, list[pb.GenerateResponse]]:
    messages: list[pb.GenerateResponse] = []
    try:
        async for message in call:
            messages.append(message)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), messages
    return grpc.StatusCode.OK, messages


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _false(value: Any) -> bool:
    return not await value


async def _healthy(pool: RemoteGenerator, url: str) -> bool:
    return any(s.url == url and s.healthy for s in pool.endpoints)
