"""Retries against real servers: UNAVAILABLE while a server is not up yet (gRPC's retry policy), and
RESOURCE_EXHAUSTED with the server's RetryInfo delay waited out (the client's own loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc_client import AsyncClient, ClientOptions, ResourceExhausted, Retries, Unavailable
from tests.api.interceptors.conftest import serving
from tests.conftest import free_loopback_port

# Backoffs drawn from U(0, 1 s), U(0, 2 s), U(0, 4 s), U(0, 4 s): the chance that all four retries are spent
# before the late server below is up (0.5 s) and connected is about 1 in 4000.
PATIENT = ClientOptions(retries=Retries(initial_backoff_s=1.0, max_backoff_s=4.0))


async def test_unavailable_is_retried_until_a_late_server_comes_up(
    engines: Engines, settings: Settings
) -> None:
    port = free_loopback_port()
    target = f"127.0.0.1:{port}"

    # Without retries the first refused connection is the answer.
    async with AsyncClient(target, options=ClientOptions(retries=Retries(unavailable_attempts=1))) as client:
        with pytest.raises(Unavailable):
            await client.info()

    async with AsyncClient(target, options=PATIENT) as client:
        began = time.monotonic()
        call = asyncio.create_task(client.info())
        await asyncio.sleep(0.5)
        assert not call.done()
        async with serving(engines, settings, port=port):
            info = await asyncio.wait_for(call, timeout=10)
            assert info.version
            assert time.monotonic() - began >= 0.5


async def test_resource_exhausted_waits_the_retry_info_delay(engines: Engines, settings: Settings) -> None:
    # One call per 0.5 s each, for Info and Generate: a second call at once is refused with RetryInfo ~0.5 s.
    rule = {"requests_per_s": 2, "request_burst": 1}
    async with serving(engines, settings, rate_limits={"Info": rule, "Generate": rule}) as s:
        async with AsyncClient(s.target) as client:
            await client.info()
            began = time.monotonic()
            await client.info()
            waited = time.monotonic() - began
            assert 0.3 <= waited < 3, waited

            await client.answer("Hi", max_tokens=2)
            began = time.monotonic()
            answer = await client.answer("Hi", max_tokens=2)
            assert answer.final.usage.completion_tokens >= 1
            assert 0.3 <= time.monotonic() - began < 10

        # Opting out: the refusal is raised at once, with the delay the server asked for.
        no_retry = ClientOptions(retries=Retries(resource_exhausted_attempts=1))
        async with AsyncClient(s.target, options=no_retry) as client:
            await asyncio.sleep(0.6)
            await client.info()
            with pytest.raises(ResourceExhausted) as refused:
                await client.info()
            assert refused.value.retry_after_s is not None and 0.1 < refused.value.retry_after_s <= 0.5
        # A delay over the bound is not waited for either.
        impatient = ClientOptions(retries=Retries(max_wait_s=0.05))
        async with AsyncClient(s.target, options=impatient) as client:
            began = time.monotonic()
            with pytest.raises(ResourceExhausted):
                await client.info()
                await client.info()
            assert time.monotonic() - began < 0.5
