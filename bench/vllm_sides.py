"""Generate on vLLM, side by side: vLLM's own servers and rag-grpc in front of, or around, the same engine.

One closed-loop load (bench/load.py), one prompt (bench/peers.GENERATE_PROMPT as the only user message),
streams of exactly `tokens` tokens (min_tokens = max_tokens, greedy), at each stream count, against:

  (a) vLLM's gRPC server, called directly with token ids (as SMG calls it);
  (b) vLLM's OpenAI server, streamed chat completions (SSE);
  (c) rag-grpc with vLLM in process;
  (d) rag-grpc with the remote grpc:// backend in front of (a);
  (e) rag-grpc's transformers engine;
  (f) rag-grpc's onnxruntime engine, int4 (generator_backend=onnxruntime, generator_precision=int4).

Every vLLM engine runs with the same flags (float32, compiled, 1 GiB KV cache, max_model_len 2048). One
engine runs at a time; (d) runs while (a)'s worker is up, right after (a).

    OMP_WAIT_POLICY=PASSIVE python -m bench.run --only vllm
    python -m bench.vllm_sides onnxruntime   # (f) alone, 10 s per stream count, printed as JSON
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench.load import Sample, run_load
from bench.peers import (
    GENERATE_PROMPT,
    LOG_DIR,
    converted_smollm2_dir,
    free_loopback_port,
    generate_summary,
    running_server,
)
from bench.serve_generate import fixed_length, stream_tokens
from bench.server import bench_settings, serving
from rag_grpc.engines.chat_template import ChatTemplate
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from rag_grpc.vllm_protocol import vllm_engine_pb2 as vpb
from rag_grpc.vllm_protocol import vllm_engine_pb2_grpc as vpb_grpc

SERVED = "SmolLM2-135M-Instruct"
KV_CACHE_BYTES = 1 << 30


def engine_flags(model_dir: Path) -> list[str]:
    return [
        "--model", str(model_dir), "--served-model-name", SERVED, "--max-model-len", "2048",
        "--dtype", "float32", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
    ]  # fmt: skip


def _worker_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SMG_VLLM_SERVICER_WARMUP": "off", "VLLM_NO_USAGE_STATS": "1", **extra}


@asynccontextmanager
async def vllm_grpc_worker(model_dir: Path, **env: str) -> AsyncIterator[str]:
    port = free_loopback_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.grpc_server", "--host", "127.0.0.1",
            "--port", str(port), *engine_flags(model_dir)]  # fmt: skip
    # Its standard health service answers once the engine is up; wait through HealthCheck over gRPC.
    async with _process("vllm-grpc", argv, _worker_env(**env)):
        await _wait_grpc(f"127.0.0.1:{port}", 600)
        yield f"127.0.0.1:{port}"


@asynccontextmanager
async def vllm_openai_worker(model_dir: Path) -> AsyncIterator[str]:
    port = free_loopback_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
            "--port", str(port), *engine_flags(model_dir)]  # fmt: skip
    async with running_server("vllm-openai", argv, _worker_env(), f"http://127.0.0.1:{port}/health", 600):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def _process(name: str, argv: list[str], env: dict[str, str]) -> AsyncIterator[None]:
    from bench.peers import _stop_group

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"{name}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        await asyncio.shield(_stop_group(process))


async def _wait_grpc(target: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = vpb_grpc.VllmEngineStub(channel)
        while True:
            try:
                if (await stub.HealthCheck(vpb.HealthCheckRequest(), timeout=2)).healthy:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM gRPC server at {target} not ready in {timeout_s} s")
            await asyncio.sleep(0.5)


Call = Callable[[int], Awaitable[Sample]]


async def _measure(
    call: Call, streams: Sequence[int], duration_s: float, warmup_s: float
) -> list[dict[str, Any]]:
    return [
        generate_summary(await run_load(call, count, duration_s, 200, warmup_s=warmup_s)) for count in streams
    ]


def _direct_grpc_call(stub: vpb_grpc.VllmEngineStub, prompt_ids: list[int], tokens: int) -> Call:
    async def call(index: int) -> Sample:
        request = vpb.GenerateRequest(
            request_id=f"bench-{index}-{time.monotonic_ns()}",
            tokenized=vpb.TokenizedInput(input_ids=prompt_ids),
            sampling_params=vpb.SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens),
            stream=True,
        )
        first, items = None, 0
        async for response in stub.Generate(request):
            if response.HasField("chunk"):
                items += len(response.chunk.token_ids)
                first = first or time.perf_counter()
        return Sample(items=items, first_item_at=first)

    return call


def _openai_call(session: aiohttp.ClientSession, url: str, tokens: int) -> Call:
    body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": GENERATE_PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        "max_tokens": tokens,
        "min_tokens": tokens,
    }

    async def call(_: int) -> Sample:
        first, usage = None, None
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                chunk = json.loads(line[5:])
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                    first = time.perf_counter()
                usage = chunk.get("usage") or usage
        if usage is None:
            raise RuntimeError("vLLM's OpenAI stream ended without usage")
        return Sample(items=int(usage["completion_tokens"]), first_item_at=first)

    return call


def _rag_grpc_call(stub: pb_grpc.GenerateServiceStub, tokens: int) -> Call:
    request = pb.GenerateRequest(prompt=GENERATE_PROMPT, sampling=fixed_length(tokens, temperature=0.0))

    async def call(_: int) -> Sample:
        return await stream_tokens(stub, request)

    return call


async def _through_rag_grpc(settings_overrides: dict[str, Any], streams: Sequence[int], tokens: int,
                            duration_s: float, warmup_s: float) -> list[dict[str, Any]]:  # fmt: skip
    settings = bench_settings(cache_backend="none", **settings_overrides)
    async with serving(settings) as served, grpc.aio.insecure_channel(served.target) as channel:
        return await _measure(
            _rag_grpc_call(pb_grpc.GenerateServiceStub(channel), tokens), streams, duration_s, warmup_s
        )


async def bench_vllm_sides(
    streams: Sequence[int] = (1, 16), tokens: int = 64, duration_s: float = 30.0, warmup_s: float = 5.0
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    model_dir = await asyncio.to_thread(converted_smollm2_dir)
    template = ChatTemplate(await asyncio.to_thread(AutoTokenizer.from_pretrained, str(model_dir)))
    from rag_grpc.domain import ChatMessage

    prompt_ids = template.render([ChatMessage("user", GENERATE_PROMPT)], tokens)
    sides: dict[str, Any] = {}
    vllm_engine = {"vllm_kv_cache_memory_bytes": KV_CACHE_BYTES, "vllm_max_model_len": 2048}

    async with vllm_grpc_worker(model_dir) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            call = _direct_grpc_call(vpb_grpc.VllmEngineStub(channel), prompt_ids, tokens)
            sides["vllm_grpc"] = await _measure(call, streams, duration_s, warmup_s)
        sides["rag_grpc_remote_grpc"] = await _through_rag_grpc(
            {"generator_backend": "remote", "generator_endpoints": f"grpc://{target}"},
            streams, tokens, duration_s, warmup_s,
        )  # fmt: skip
    if preload := _preload_libraries():
        # vLLM for CPU asks for tcmalloc and Intel's OpenMP in LD_PRELOAD "for best performance": (a) again.
        async with (
            vllm_grpc_worker(model_dir, LD_PRELOAD=preload) as target,
            grpc.aio.insecure_channel(target) as channel,
        ):
            call = _direct_grpc_call(vpb_grpc.VllmEngineStub(channel), prompt_ids, tokens)
            sides["vllm_grpc_preload"] = await _measure(call, streams, duration_s, warmup_s)
    async with (
        vllm_openai_worker(model_dir) as base,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(streams)), timeout=aiohttp.ClientTimeout(total=300)
        ) as session,
    ):
        sides["vllm_openai"] = await _measure(
            _openai_call(session, f"{base}/v1/chat/completions", tokens), streams, duration_s, warmup_s
        )
    sides["rag_grpc_vllm"] = await _through_rag_grpc(
        {"generator_backend": "vllm", **vllm_engine}, streams, tokens, duration_s, warmup_s
    )
    sides["rag_grpc_transformers"] = await _through_rag_grpc({}, streams, tokens, duration_s, warmup_s)
    sides["rag_grpc_onnxruntime"] = await bench_onnxruntime_side(streams, tokens, duration_s, warmup_s)
    return {"tokens": tokens, "sides": sides}


async def bench_onnxruntime_side(
    streams: Sequence[int] = (1, 16), tokens: int = 64, duration_s: float = 30.0, warmup_s: float = 5.0
) -> list[dict[str, Any]]:
    """(f): the quantized model is built on the first start (~30 s) and reused from the model cache."""
    overrides = {"generator_backend": "onnxruntime", "generator_precision": "int4"}
    return await _through_rag_grpc(overrides, streams, tokens, duration_s, warmup_s)


def _preload_libraries() -> str:
    """tcmalloc (Debian libtcmalloc-minimal4, which `make bench` installs) and libiomp5 (pip's intel-openmp,
    a vLLM-for-CPU dependency), as vLLM's CPU install guide preloads them; "" when either is missing."""
    tcmalloc = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    return f"{tcmalloc}:{iomp}" if tcmalloc.exists() and iomp.exists() else ""


if __name__ == "__main__":
    if sys.argv[1:] != ["onnxruntime"]:
        sys.exit(
            "usage: python -m bench.vllm_sides onnxruntime   (the full table: python -m bench.run --only vllm)"
        )
    print(json.dumps(asyncio.run(bench_onnxruntime_side(duration_s=10.0, warmup_s=3.0)), indent=2))
