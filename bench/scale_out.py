"""Scale-out rows: Retrieve QPS at 64 callers with the index in process (FAISS) and in Milvus (a
milvus-lite server on loopback), and the latency the nginx front (deploy/nginx/rag-grpc.conf) adds to a
unary call. Driven by the one closed loop (bench/load.py); the result caches are off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.load import Sample, run_load
from bench.nginx_front import NginxFront
from bench.redis_server import _free_loopback_port
from bench.server import bench_settings, serving
from rag_grpc.domain import Document
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

TOP_K = 10


@asynccontextmanager
async def milvus_lite_server() -> AsyncIterator[str]:
    """`milvus-lite server` on a free loopback port; yields its URI."""
    from pymilvus import MilvusClient, MilvusException

    port = _free_loopback_port()
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as workdir:
        command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", f"{workdir}/data"]
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    await asyncio.to_thread(lambda: MilvusClient(uri=uri, timeout=2).close())
                    break
                except MilvusException:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("milvus-lite server did not start") from None
                    await asyncio.sleep(0.2)
            yield uri
        finally:
            process.terminate()
            process.wait(10)


async def _retrieve_qps(target: str, queries: np.ndarray, clients: int, duration_s: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        retrieve = pb_grpc.RetrieveServiceStub(channel).Retrieve

        async def call(i: int) -> Sample:
            vector = pb.Vector(values=queries[i % len(queries)].tolist())
            await retrieve(pb.RetrieveRequest(vector=vector, top_k=TOP_K))
            return Sample(items=1)

        result = await run_load(call, clients, duration_s, max_requests=1_000_000, warmup_s=1.0)
    summary = result.summary()
    return {
        "per_s": summary["requests_per_s"],
        "p50_ms": result.latency_p50_s * 1000,
        "p99_ms": result.latency_p99_s * 1000,
        "non_ok": summary["non_ok"],
    }


async def _info_p50_ms(target: str, calls: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        info = pb_grpc.InfoServiceStub(channel).Info

        async def call(_: int) -> Sample:
            await info(pb.InfoRequest())
            return Sample(items=1)

        result = await run_load(call, 1, 60.0, max_requests=calls, warmup_s=0.5)
    return {"p50_ms": result.latency_p50_s * 1000, "non_ok": result.summary()["non_ok"]}


async def bench_scale_out(
    documents: int = 100_000, dimension: int = 384, clients: int = 64, duration_s: float = 10.0
) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(documents, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, documents, 256)]
    results: dict[str, Any] = {"documents": documents, "dimension": dimension, "clients": clients}
    async with milvus_lite_server() as milvus_uri:
        backends = {
            "faiss": {},
            "milvus": {
                "vector_store_backend": "milvus",
                "milvus_uri": milvus_uri,
                "milvus_collection": f"bench_{uuid.uuid4().hex}",
            },
        }
        for name, overrides in backends.items():
            settings = bench_settings(cache_backend="none", **overrides)
            async with serving(settings, with_generator=False) as served:
                started = time.perf_counter()
                for start in range(0, documents, 10_000):
                    ids = range(start, min(start + 10_000, documents))
                    batch = [Document(id=f"doc-{i}", text=f"document {i}") for i in ids]
                    await served.engines.vector_store.upsert(batch, vectors[ids.start : ids.stop])
                load_s = time.perf_counter() - started
                results[name] = await _retrieve_qps(served.target, queries, clients, duration_s)
                results[name]["load_s"] = load_s
                if name == "faiss":
                    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as workdir:
                        front = NginxFront(Path(workdir), [served.target], _free_loopback_port())
                        with front:
                            calls = 2_000 if duration_s >= 5 else 500
                            results["direct"] = await _info_p50_ms(served.target, calls)
                            results["nginx"] = await _info_p50_ms(front.address, calls)
    print(f"\nScale-out: Retrieve by vector, {documents:,} x {dimension}, {clients} callers")
    for name in ("faiss", "milvus"):
        row = results[name]
        print(
            f"{name:>8} {row['per_s']:8.0f} QPS  p50 {row['p50_ms']:6.1f} ms  (loaded in {row['load_s']:.1f} s)"
        )
    print(
        f"Info p50: direct {results['direct']['p50_ms']:.3f} ms, via nginx {results['nginx']['p50_ms']:.3f} ms"
    )
    return results


if __name__ == "__main__":
    asyncio.run(bench_scale_out(documents=20_000, duration_s=3.0))
