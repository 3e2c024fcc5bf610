from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rag_grpc.api.server import SERVICE_NAMES
from tests.conftest import Stubs

ROOT = Path(__file__).resolve().parents[2]


async def test_health_is_serving_overall_and_per_service(stubs: Stubs) -> None:
    for service in ("", *SERVICE_NAMES):
        response = await stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_health_watch_streams_the_current_status(stubs: Stubs) -> None:
    call = stubs.health.Watch(health_pb2.HealthCheckRequest(service="rag_grpc.v1.RetrieveService"))
    first = await call.read()
    call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_every_service(channel) -> None:  # type: ignore[no-untyped-def]
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for response in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in response.list_services_response.service}
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= names


async def test_grpcurl_smoke_script_passes(target: str) -> None:
    env = {**os.environ, "GRPCURL": str(Path(sys.executable).parent / "grpcurl")}
    process = await asyncio.create_subprocess_exec(
        str(ROOT / "clients" / "grpcurl_smoke.sh"),
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, output.decode()
    assert b"SMOKE OK" in output
