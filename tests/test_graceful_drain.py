"""SIGTERM with a stream in flight: health turns NOT_SERVING, new calls get UNAVAILABLE, the stream
completes within the grace period, and acknowledged data is there after a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.storage.server_process import ServerProcess


async def _health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status


async def test_sigterm_drains_in_flight_streams_and_keeps_data(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--generator-backend", "transformers", "--shutdown-grace-s", "60")
    target = await asyncio.to_thread(server.start)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            documents = pb_grpc.DocumentServiceStub(channel)
            await documents.Upsert(
                pb.UpsertRequest(documents=[pb.Document(id="kept", text="Acknowledged before shutdown.")])
            )
            stream = pb_grpc.GenerateServiceStub(channel).Generate(
                pb.GenerateRequest(
                    prompt="Write a story about a lighthouse.", sampling=pb.SamplingParams(max_tokens=48)
                )
            )
            first = await stream.read()
            assert first.HasField("delta")

            server.send_signal(signal.SIGTERM)
            for _ in range(100):
                try:
                    if await _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
            assert await _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
            # Balancers get a moment (0.3 s) to act on NOT_SERVING before new calls are refused.
            await asyncio.sleep(0.5)

            try:
                await pb_grpc.EmbedServiceStub(channel).Embed(pb.EmbedRequest(texts=["new call"]), timeout=10)
                raise AssertionError("a new call during the drain was served")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err

            rest = []
            while (message := await stream.read()) is not grpc.aio.EOF:
                rest.append(message)
            assert rest[-1].HasField("final"), "the in-flight stream was cut instead of completing"
            assert rest[-1].final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        assert await asyncio.to_thread(server.wait, 60) == 0
        events = [e.get("event") for e in server.events_since_start()]
        assert "shutdown_complete" in events

        target = await asyncio.to_thread(server.start)
        async with grpc.aio.insecure_channel(target) as channel:
            hits = await pb_grpc.RetrieveServiceStub(channel).Retrieve(
                pb.RetrieveRequest(text="shutdown", top_k=1)
            )
            assert [h.id for h in hits.hits] == ["kept"]
    finally:
        server.kill()
