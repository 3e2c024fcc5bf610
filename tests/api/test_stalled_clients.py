"""Clients that stop reading cannot keep generation slots: with the production chain and the default
capacity, as many stalled Generate calls as there are slots free them once the stall timeout fires,
and a new caller's Generate is admitted and streams."""

from __future__ import annotations

import asyncio
import sys
import time

from rag_grpc.engines import Engines
from rag_grpc.settings import LimitSettings, Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import serving
from tests.helpers import collect

# One process, one channel, `n` Generate calls that are never read. With nothing read, the client
# grants only a small flow-control window, so the server's write of the large Sources message blocks.
STALLED_CLIENTS = """
import sys, time, grpc
from rag_grpc.v1 import rag_pb2 as pb, rag_pb2_grpc as pb_grpc
target, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
channel = grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
stub = pb_grpc.GenerateServiceStub(channel)
calls = [stub.Generate(pb.GenerateRequest(
    prompt=f"Tell me everything about the documents, part {i}.",
    retrieval=pb.RetrievalOptions(top_k=40, filter={"test": tag}),
    sampling=pb.SamplingParams(max_tokens=400))) for i in range(n)]
print("started", flush=True)
time.sleep(600)
"""


async def _until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_stalled_clients_free_their_slots_and_a_new_caller_streams(
    engines: Engines, settings: Settings, isolated_tag: str
) -> None:
    stall_s = 3.0
    # Default capacity and queue; a short stall timeout and a short grounded prompt (prefill of 16
    # long prompts at once would take many seconds on this CPU).
    async with serving(
        engines, settings, stream_stall_timeout_s=stall_s, stream_buffer_events=4, max_grounding_chars=300
    ) as s:
        capacity = s.settings.limits.max_concurrent_generations
        assert capacity == LimitSettings.model_fields["max_concurrent_generations"].default
        documents = [
            pb.Document(id=f"{isolated_tag}-{i}", text=f"filler {i} " * 800, metadata={"test": isolated_tag})
            for i in range(40)
        ]
        await s.stubs.documents.Upsert(pb.UpsertRequest(documents=documents), timeout=120)
        clients = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            STALLED_CLIENTS,
            s.target,
            isolated_tag,
            str(capacity),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert clients.stdout is not None
            assert (await clients.stdout.readline()).strip() == b"started"
            # Every slot is taken by a stalled call...
            await _until(lambda: s.sample("rag_generate_running") == capacity, timeout_s=60)
            # ...until the stall timeout aborts their generations, which gives the slots back although
            # the calls themselves stay open (their status can only follow a write the client never reads).
            await _until(lambda: s.sample("rag_generate_running") == 0, timeout_s=stall_s + 30)
            assert s.sample("rag_generate_waiting") == 0
            assert engines.default_generator.num_running_requests() == 0

            started = time.monotonic()
            messages = await collect(
                s.stubs.generate.Generate(
                    pb.GenerateRequest(prompt="Say hello.", sampling=pb.SamplingParams(max_tokens=8)),
                    timeout=60,
                )
            )
            assert messages[-1].HasField("final") and messages[-1].final.usage.completion_tokens > 0
            assert any(m.HasField("delta") for m in messages)
            assert time.monotonic() - started < 30
        finally:
            clients.kill()
            await clients.wait()
