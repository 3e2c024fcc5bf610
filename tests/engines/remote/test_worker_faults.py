"""Remote workers that misbehave: each fault ends the request with a clear status (UNAVAILABLE for the
worker's faults, INVALID_ARGUMENT for the request's), counts against the endpoint, moves the request to
another endpoint only before any text was sent, and never surfaces as INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from structlog.testing import capture_logs

from rag_grpc.domain import ChatMessage, FinishReason, GenerationChunk, GenerationRequest, SamplingOptions
from rag_grpc.engines.remote import RemoteGenerator
from rag_grpc.engines.remote.metrics import EndpointCollector
from rag_grpc.errors import InvalidArgument, Unavailable
from tests.fakes.misbehaving_workers import start_grpc_worker, start_openai_worker

Starter = Callable[[str], Awaitable[tuple[Any, str, Any]]]
PROTOCOLS: dict[str, Starter] = {"grpc": start_grpc_worker, "openai": start_openai_worker}


@pytest.fixture
async def workers() -> AsyncIterator[Callable[[str, str], Awaitable[tuple[str, Any]]]]:
    async with AsyncExitStack() as stack:

        async def start(protocol: str, mode: str) -> tuple[str, Any]:
            server, url, worker = await PROTOCOLS[protocol](mode)
            stop = server.stop(None) if protocol == "grpc" else server.cleanup()
            stack.push_async_callback(lambda: stop)
            return url, worker

        yield start


def request() -> GenerationRequest:
    return GenerationRequest("fault-1", [ChatMessage("user", "hi")], SamplingOptions(16))


async def answer(generator: RemoteGenerator) -> list[GenerationChunk]:
    return [chunk async for chunk in generator.generate(request())]


def pool(urls: list[str], model_dir: Path, **options: Any) -> RemoteGenerator:
    return RemoteGenerator(urls, model_dir, probe_interval_s=60, **options)


FAULTS = [
    ("grpc", "out_of_vocabulary"),
    ("grpc", "empty_message"),
    ("grpc", "error_finish"),
    ("grpc", "ends_early"),
    ("grpc", "internal"),
    ("grpc", "resource_exhausted"),
    ("openai", "http_500"),
    ("openai", "malformed"),
    ("openai", "ends_early"),
    ("openai", "unknown_finish"),
]


@pytest.mark.parametrize(("protocol", "mode"), FAULTS)
async def test_a_worker_fault_is_unavailable_and_logged_with_the_endpoint(
    protocol: str, mode: str, workers: Any, generator_model_dir: Path
) -> None:
    url, _ = await workers(protocol, mode)
    async with pool([url], generator_model_dir) as generator:
        with capture_logs() as logs, pytest.raises(Unavailable):
            await answer(generator)
        (failure,) = [e for e in logs if e["event"] == "generator_endpoint_failed"]
        assert failure["endpoint"] == url
        assert failure["request_id"] == "fault-1"
        assert generator.endpoints[0].failures == 1


@pytest.mark.parametrize("protocol", ["grpc", "openai"])
async def test_a_refusal_is_invalid_argument_and_not_the_endpoints_fault(
    protocol: str, workers: Any, generator_model_dir: Path
) -> None:
    url, _ = await workers(protocol, "refuses")
    async with pool([url], generator_model_dir) as generator:
        with pytest.raises(InvalidArgument) as raised:
            await answer(generator)
        assert raised.value.field == "prompt"
        assert generator.endpoints[0].failures == 0


@pytest.mark.parametrize("protocol", ["grpc", "openai"])
async def test_a_fault_before_any_text_moves_the_request_to_another_endpoint(
    protocol: str, workers: Any, generator_model_dir: Path
) -> None:
    broken = "internal" if protocol == "grpc" else "http_500"
    bad, _ = await workers(protocol, broken)
    good, _ = await workers(protocol, "ok")
    async with pool([bad, good], generator_model_dir) as generator:
        for _ in range(4):  # whichever endpoint is picked first, the answer comes from the good one
            chunks = await answer(generator)
            assert chunks[-1].finish_reason is FinishReason.STOP
        status = {s.url: s for s in generator.endpoints}
        assert status[good].requests == 4
        assert status[bad].failures >= 1


@pytest.mark.parametrize("protocol", ["grpc", "openai"])
async def test_a_fault_after_text_was_sent_is_never_retried(
    protocol: str, workers: Any, generator_model_dir: Path
) -> None:
    bad, _ = await workers(protocol, "ends_early")  # sends "Hello", then stops without finishing
    good, _ = await workers(protocol, "ok")
    async with pool([bad, good], generator_model_dir, eject_after_failures=100) as generator:
        outcomes = []
        for _ in range(4):
            received: list[GenerationChunk] = []
            try:
                async for chunk in generator.generate(request()):
                    received.append(chunk)
                outcomes.append("ok")
            except Unavailable:
                # Text reached the caller from the bad worker: no second answer is spliced after it.
                assert "".join(c.text for c in received).startswith("Hello")
                assert all(c.finish_reason is None for c in received)
                outcomes.append("unavailable")
        assert "unavailable" in outcomes and "ok" in outcomes
        status = {s.url: s for s in generator.endpoints}
        assert status[bad].requests == outcomes.count("unavailable")


async def test_consecutive_request_failures_eject_an_endpoint_that_passes_health_checks(
    workers: Any, generator_model_dir: Path
) -> None:
    bad_url, _ = await workers("grpc", "internal")  # answers health checks, fails every request
    good_url, _ = await workers("grpc", "ok")
    async with pool([bad_url, good_url], generator_model_dir, eject_after_failures=2) as generator:
        status = {s.url: s for s in generator.endpoints}
        for _ in range(10):
            if not status[bad_url].healthy:
                break
            await answer(generator)  # each still succeeds, on the good endpoint
        assert (status[bad_url].healthy, status[bad_url].ejections) == (False, 1)
        assert [e.healthy for e in generator.info.endpoints] == [False, True]

        registry = CollectorRegistry()
        registry.register(EndpointCollector([generator]))
        bad = {"model": generator.info.model, "endpoint": bad_url}
        good = {"model": generator.info.model, "endpoint": good_url}
        assert registry.get_sample_value("rag_generator_endpoint_healthy", bad) == 0
        assert registry.get_sample_value("rag_generator_endpoint_healthy", good) == 1
        assert registry.get_sample_value("rag_generator_endpoint_ejections_total", bad) == 1
        assert registry.get_sample_value("rag_generator_endpoint_failures_total", bad) == 2
        answered = registry.get_sample_value("rag_generator_endpoint_requests_total", good)
        assert answered == registry.get_sample_value("rag_generator_endpoint_request_seconds_count", good) > 0


async def test_a_probe_brings_an_ejected_endpoint_back(workers: Any, generator_model_dir: Path) -> None:
    bad_url, bad = await workers("grpc", "down")  # fails health checks and requests
    good_url, _ = await workers("grpc", "ok")
    async with RemoteGenerator(
        [bad_url, good_url], generator_model_dir, eject_after_failures=2, probe_interval_s=0.1
    ) as generator:
        status = {s.url: s for s in generator.endpoints}
        await _until(lambda: not status[bad_url].healthy, 3.0)
        bad.mode = "ok"
        await _until(lambda: status[bad_url].healthy, 3.0)
        requests_before = status[bad_url].requests
        for _ in range(4):
            await answer(generator)
        assert status[bad_url].requests > requests_before


async def test_a_worker_back_after_half_a_minute_rejoins_within_seconds(generator_model_dir: Path) -> None:
    """gRPC's default reconnect backoff grows past 15 s within half a minute of a worker's absence (a vLLM
    worker's restart takes that long); the pool's channels cap it at 2 s."""
    server, url, _ = await start_grpc_worker("ok")
    port = int(url.rsplit(":", 1)[1])
    async with RemoteGenerator(
        [url], generator_model_dir, eject_after_failures=1, probe_interval_s=0.1
    ) as generator:
        status = generator.endpoints[0]
        await server.stop(None)
        await _until(lambda: not status.healthy, 3.0)
        await asyncio.sleep(30.0)
        server, _, _ = await start_grpc_worker("ok", port)
        try:
            await _until(lambda: status.healthy, 3.0)
            assert (await answer(generator))[-1].finish_reason is FinishReason.STOP
        finally:
            await server.stop(None)


async def test_an_unreachable_endpoint_at_start_is_named_not_waited_for(
    workers: Any, generator_model_dir: Path
) -> None:
    from tests.conftest import free_loopback_port

    dead = f"grpc://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(Unavailable, match=dead.replace(".", r"\.")):
        async with RemoteGenerator([dead], generator_model_dir, connect_timeout_s=1.0):
            pass
    good, _ = await workers("grpc", "ok")
    with capture_logs() as logs:
        async with RemoteGenerator([dead, good], generator_model_dir, connect_timeout_s=1.0) as generator:
            assert [e.healthy for e in generator.info.endpoints] == [False, True]
    assert any(e["event"] == "generator_endpoint_unreachable" and e["endpoint"] == dead for e in logs)


async def test_the_api_key_reaches_the_worker_and_never_the_log(
    workers: Any, generator_model_dir: Path
) -> None:
    url, worker = await workers("openai", "ok")
    with capture_logs() as logs:
        async with RemoteGenerator([url], generator_model_dir, api_key=SecretStr("sk-test-123")) as generator:
            await answer(generator)
    assert set(worker.received_keys) == {"Bearer sk-test-123"}
    assert "sk-test-123" not in repr(logs)
    assert "sk-test-123" not in repr(generator.info)


async def _until(condition: Callable[[], bool], within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
