"""Workers that fail in ways a real vLLM worker cannot be made to on demand: malformed messages, an
"error" finish, error statuses and HTTP errors. Only faults live here; everything a real worker can
do is tested against real vLLM workers (tests/vllm_workers.py).

Each speaks just enough of its protocol (vLLM's gRPC `VllmEngine`, an OpenAI chat stream) for the
pool to connect, probe and stream; `mode` picks the fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from rag_grpc.vllm_protocol import vllm_engine_pb2 as pb
from rag_grpc.vllm_protocol import vllm_engine_pb2_grpc as pb_grpc

MODEL = "SmolLM2-135M-Instruct"
HELLO_IDS = [19556, 28, 905]  # any ids inside SmolLM2's vocabulary


class MisbehavingVllm(pb_grpc.VllmEngineServicer):  # type: ignore[misc]
    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def GetModelInfo(self, request: Any, context: Any) -> Any:
        return pb.GetModelInfoResponse(served_model_name=MODEL, vocab_size=49152, max_context_length=2048)

    async def HealthCheck(self, request: Any, context: Any) -> Any:
        return pb.HealthCheckResponse(healthy=self.mode not in ("unhealthy", "down"), message=self.mode)

    async def GetLoads(self, request: Any, context: Any) -> Any:
        return pb.GetLoadsResponse(loads=[pb.SchedulerLoad(num_running_reqs=0)])

    async def Abort(self, request: Any, context: Any) -> Any:
        return pb.AbortResponse()

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        match self.mode:
            case "out_of_vocabulary":
                yield pb.GenerateResponse(chunk=pb.GenerateStreamChunk(token_ids=[10**9]))
            case "empty_message":
                yield pb.GenerateResponse()
            case "error_finish":
                yield pb.GenerateResponse(chunk=pb.GenerateStreamChunk(token_ids=HELLO_IDS))
                yield pb.GenerateResponse(complete=pb.GenerateComplete(finish_reason="error"))
            case "ends_early":
                yield pb.GenerateResponse(chunk=pb.GenerateStreamChunk(token_ids=HELLO_IDS))
            case "internal" | "down":
                await context.abort(grpc.StatusCode.INTERNAL, "worker exploded")
            case "refuses":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt is longer than max_model_len")
            case "resource_exhausted":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            case _:
                yield pb.GenerateResponse(chunk=pb.GenerateStreamChunk(token_ids=HELLO_IDS))
                yield pb.GenerateResponse(complete=pb.GenerateComplete(finish_reason="stop"))


async def start_grpc_worker(mode: str, port: int = 0) -> tuple[grpc.aio.Server, str, MisbehavingVllm]:
    server = grpc.aio.server()
    servicer = MisbehavingVllm(mode)
    pb_grpc.add_VllmEngineServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"grpc://127.0.0.1:{port}", servicer


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }


class MisbehavingOpenAI:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received_keys: list[str] = []

    async def models(self, request: web.Request) -> web.Response:
        self.received_keys.append(request.headers.get("Authorization", ""))
        if self.mode == "unhealthy":
            return web.Response(status=503)
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "x"}]}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.received_keys.append(request.headers.get("Authorization", ""))
        if self.mode == "http_500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.mode == "refuses":
            return web.json_response(
                {"error": {"message": "prompt too long", "type": "BadRequestError"}}, status=400
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_sse(_chunk("Hello")))
        match self.mode:
            case "malformed":
                await response.write(_sse("{not json"))
            case "ends_early":
                pass
            case "unknown_finish":
                await response.write(_sse(_chunk("", "tool_calls")))
            case _:
                await response.write(_sse(_chunk(" there", "stop")))
                await response.write(_sse("[DONE]"))
        await asyncio.sleep(0)
        return response


async def start_openai_worker(mode: str) -> tuple[web.AppRunner, str, MisbehavingOpenAI]:
    worker = MisbehavingOpenAI(mode)
    app = web.Application()
    app.router.add_get("/v1/models", worker.models)
    app.router.add_post("/v1/chat/completions", worker.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1", worker
