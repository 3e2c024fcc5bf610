"""Property-based fuzzing of every RPC against a real in-process server.

Whatever a request holds, the answer is OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED or
DEADLINE_EXCEEDED (never INTERNAL or UNKNOWN), the server stays up, and a rejected request leaves
the index (size and version, via Info) as it was. The server's index is durable, so the hostile
documents that were accepted also go through the write-ahead log, and the last test replays it.

RAG_GRPC_FUZZ_EXAMPLES sets the examples per RPC (default 25, e.g. 2000 for a long run).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.storage import DurableVectorStore
from rag_grpc.v1 import rag_pb2 as pb
from tests.api import fuzz_values as values
from tests.conftest import Stubs
from tests.helpers import collect

EXAMPLES = int(os.environ.get("RAG_GRPC_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CALL_TIMEOUT_S = 60.0
# Documents the fuzzer may name, so that some deletes and replacing upserts succeed.
KNOWN_IDS = [f"seed-{n}" for n in range(8)]


class FuzzServer:
    def __init__(
        self, stubs: Stubs, channel: grpc.aio.Channel, store: DurableVectorStore, data_dir: Path
    ) -> None:
        self.stubs, self.channel, self.store, self.data_dir = stubs, channel, store, data_dir


@pytest.fixture(scope="module")
async def fuzz(
    engines: Engines, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FuzzServer]:
    """Its own server and durable index, sharing the session's models: fuzzed documents stay here."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    store = DurableVectorStore(
        FaissVectorStore(engines.embedder.dimension, "cpu"), data_dir, snapshot_interval_s=0
    )
    async with store:
        server = RagServer(
            settings, RagService(Engines(engines.embedder, store, engines.generators), settings)
        )
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            await stubs.documents.Upsert(
                pb.UpsertRequest(documents=[pb.Document(id=i, text=f"Seed {i}.") for i in KNOWN_IDS])
            )
            yield FuzzServer(stubs, channel, store, data_dir)
        await server.stop(0)


async def _index(stubs: Stubs) -> tuple[int, int]:
    info = await stubs.info.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT_S)
    return info.index.size, info.index.version


async def _status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def check(
    stubs: Stubs, call: Callable[[], Awaitable[object]], writes: bool, partial_writes: bool = False
) -> tuple[grpc.StatusCode, str]:
    """Runs one call; asserts the allowed statuses and that only a successful write changed the index
    (`partial_writes`: the caller checks what a rejected call may have kept)."""
    before = await _index(stubs)
    code, details = await _status_of(call())
    if currently_in_test_context():
        event(code.name)  # --hypothesis-show-statistics: how often each status came back
    assert code in ALLOWED, f"{code.name}: {details[:500]}"
    if code != grpc.StatusCode.OK:
        assert details, f"{code.name} without a message"
    after = await _index(stubs)
    if not writes or (code != grpc.StatusCode.OK and not partial_writes):
        assert after == before, f"{code.name} ({details[:200]}) changed the index {before} -> {after}"
    return code, details


@FUZZ
@given(request=values.embed_requests())
async def test_embed(fuzz: FuzzServer, request: pb.EmbedRequest) -> None:
    await check(fuzz.stubs, lambda: fuzz.stubs.embed.Embed(request, timeout=CALL_TIMEOUT_S), writes=False)


@FUZZ
@given(request=values.retrieve_requests())
async def test_retrieve(fuzz: FuzzServer, request: pb.RetrieveRequest) -> None:
    await check(
        fuzz.stubs, lambda: fuzz.stubs.retrieve.Retrieve(request, timeout=CALL_TIMEOUT_S), writes=False
    )


@FUZZ
@given(request=values.generate_requests())
# Found by the fuzzer: dividing float32 logits by this temperature gave NaN probabilities (INTERNAL).
@example(
    request=pb.GenerateRequest(prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=1, temperature=1e-45))
)
async def test_generate(fuzz: FuzzServer, request: pb.GenerateRequest) -> None:
    await check(
        fuzz.stubs,
        lambda: collect(fuzz.stubs.generate.Generate(request, timeout=CALL_TIMEOUT_S)),
        writes=False,
    )


@FUZZ
@given(
    direction=st.lists(st.floats(-1, 1, width=32), min_size=values.DIMENSION, max_size=values.DIMENSION),
    scale=st.sampled_from([1e-45, 1e-40, 1e-20, 1.0, 1e20, 1e36, 3.4e38]),
)
# Found by the fuzzer: a float32 norm of huge values overflowed (a query of zeros), of tiny ones underflowed.
@example(direction=[1.0] * values.DIMENSION, scale=3.4e38)
@example(direction=[1.0] * values.DIMENSION, scale=1e-45)
async def test_retrieve_by_vector_does_not_depend_on_its_length(
    fuzz: FuzzServer, direction: list[float], scale: float
) -> None:
    peak = max(abs(x) for x in direction)
    assume(peak > 0)
    scaled = (np.asarray(direction, dtype=np.float64) / peak * scale).astype(np.float32)
    assume(np.any(scaled != 0) and np.all(np.isfinite(scaled)))
    # The direction of what is sent (tiny scales round small components away), at unit length.
    unit = scaled.astype(np.float64) / np.linalg.norm(scaled.astype(np.float64))
    answers = []
    for vector in (unit.astype(np.float32), scaled):
        request = pb.RetrieveRequest(vector=pb.Vector(values=vector.tolist()), top_k=5)
        answers.append((await fuzz.stubs.retrieve.Retrieve(request, timeout=CALL_TIMEOUT_S)).hits)
    expected, got = answers
    assert len(got) == len(expected) == min(5, (await _index(fuzz.stubs))[0])
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-3)


@FUZZ
@given(request=values.upsert_requests(KNOWN_IDS))
async def test_upsert(fuzz: FuzzServer, request: pb.UpsertRequest) -> None:
    await check(fuzz.stubs, lambda: fuzz.stubs.documents.Upsert(request, timeout=CALL_TIMEOUT_S), writes=True)


@FUZZ
@given(request=values.delete_requests(KNOWN_IDS))
async def test_delete(fuzz: FuzzServer, request: pb.DeleteRequest) -> None:
    await check(fuzz.stubs, lambda: fuzz.stubs.documents.Delete(request, timeout=CALL_TIMEOUT_S), writes=True)


@FUZZ
@given(stream=values.ingest_streams(KNOWN_IDS))
async def test_ingest(fuzz: FuzzServer, stream: list[pb.IngestRequest]) -> None:
    async def requests() -> AsyncIterator[pb.IngestRequest]:
        for message in stream:
            yield message

    before = await _index(fuzz.stubs)
    call = lambda: fuzz.stubs.documents.Ingest(requests(), timeout=CALL_TIMEOUT_S)  # noqa: E731
    code, details = await check(fuzz.stubs, call, writes=True, partial_writes=True)
    after = await _index(fuzz.stubs)
    # Ingest stores each message as it arrives: a rejection keeps exactly the batches before the bad one.
    if code != grpc.StatusCode.OK:
        bad = re.match(r"requests\[(\d+)\]", details)
        kept = int(bad.group(1)) if bad else 0
        assert after[1] - before[1] == kept, (details, before, after)


@FUZZ
@given(request=values.message(pb.InfoRequest))
async def test_info(fuzz: FuzzServer, request: pb.InfoRequest) -> None:
    await check(fuzz.stubs, lambda: fuzz.stubs.info.Info(request, timeout=CALL_TIMEOUT_S), writes=False)


# --- bytes that are not a valid message at all

# method -> (kind of call, whether it may write)
METHODS = {
    "/rag_grpc.v1.EmbedService/Embed": ("unary_unary", False),
    "/rag_grpc.v1.RetrieveService/Retrieve": ("unary_unary", False),
    "/rag_grpc.v1.GenerateService/Generate": ("unary_stream", False),
    "/rag_grpc.v1.DocumentService/Upsert": ("unary_unary", True),
    "/rag_grpc.v1.DocumentService/Delete": ("unary_unary", True),
    "/rag_grpc.v1.DocumentService/Ingest": ("stream_unary", True),
    "/rag_grpc.v1.InfoService/Info": ("unary_unary", False),
    "/rag_grpc.v1.AdminService/Snapshot": ("unary_unary", True),
}


def _raw_call(channel: grpc.aio.Channel, method: str, payload: bytes) -> Awaitable[object]:
    """Sends `payload` as the request exactly as given: with no serializer, bytes go out untouched."""
    kind, _ = METHODS[method]
    multicallable = getattr(channel, kind)(method)
    if kind == "stream_unary":

        async def one() -> AsyncIterator[bytes]:
            yield payload

        return multicallable(one(), timeout=CALL_TIMEOUT_S)
    if kind == "unary_stream":
        return collect(multicallable(payload, timeout=CALL_TIMEOUT_S))
    return multicallable(payload, timeout=CALL_TIMEOUT_S)


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), payload=st.binary(max_size=300))
async def test_random_bytes(fuzz: FuzzServer, method: str, payload: bytes) -> None:
    await check(fuzz.stubs, lambda: _raw_call(fuzz.channel, method, payload), writes=METHODS[method][1])


MARKER = "\x01MARKER\x01"
NOT_UTF8 = (
    b"\xff\xfe\xc3\x28\xed\xa0\x80\xc0"  # same length as the marker's UTF-8 bytes, so lengths stay valid
)
assert len(NOT_UTF8) == len(MARKER.encode())

# One request per string field of the API; each carries MARKER where the invalid bytes will go.
STRING_FIELDS: list[tuple[str, str, object]] = [
    ("embed texts", "/rag_grpc.v1.EmbedService/Embed", pb.EmbedRequest(texts=["fine", MARKER])),
    ("retrieve text", "/rag_grpc.v1.RetrieveService/Retrieve", pb.RetrieveRequest(text=MARKER)),
    (
        "retrieve filter key",
        "/rag_grpc.v1.RetrieveService/Retrieve",
        pb.RetrieveRequest(text="a", filter={MARKER: "v"}),
    ),
    (
        "retrieve filter value",
        "/rag_grpc.v1.RetrieveService/Retrieve",
        pb.RetrieveRequest(text="a", filter={"k": MARKER}),
    ),
    ("generate prompt", "/rag_grpc.v1.GenerateService/Generate", pb.GenerateRequest(prompt=MARKER)),
    (
        "generate role",
        "/rag_grpc.v1.GenerateService/Generate",
        pb.GenerateRequest(messages=[pb.ChatMessage(role=MARKER, content="x")]),
    ),
    (
        "generate content",
        "/rag_grpc.v1.GenerateService/Generate",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=MARKER)]),
    ),
    (
        "generate stop",
        "/rag_grpc.v1.GenerateService/Generate",
        pb.GenerateRequest(prompt="a", sampling=pb.SamplingParams(stop=[MARKER])),
    ),
    ("generate model", "/rag_grpc.v1.GenerateService/Generate", pb.GenerateRequest(prompt="a", model=MARKER)),
    (
        "generate retrieval filter",
        "/rag_grpc.v1.GenerateService/Generate",
        pb.GenerateRequest(prompt="a", retrieval=pb.RetrievalOptions(filter={"k": MARKER})),
    ),
    (
        "upsert id",
        "/rag_grpc.v1.DocumentService/Upsert",
        pb.UpsertRequest(documents=[pb.Document(id=MARKER, text="t")]),
    ),
    (
        "upsert text",
        "/rag_grpc.v1.DocumentService/Upsert",
        pb.UpsertRequest(documents=[pb.Document(id="ok", text=MARKER)]),
    ),
    (
        "upsert metadata",
        "/rag_grpc.v1.DocumentService/Upsert",
        pb.UpsertRequest(documents=[pb.Document(id="ok", text="t", metadata={"k": MARKER})]),
    ),
    ("delete ids", "/rag_grpc.v1.DocumentService/Delete", pb.DeleteRequest(ids=[KNOWN_IDS[0], MARKER])),
    (
        "ingest text",
        "/rag_grpc.v1.DocumentService/Ingest",
        pb.IngestRequest(documents=[pb.Document(id="ok", text=MARKER)]),
    ),
]


@pytest.mark.parametrize(("field", "method", "template"), STRING_FIELDS, ids=[f[0] for f in STRING_FIELDS])
async def test_invalid_utf8_in_a_string_field_is_invalid_argument(
    fuzz: FuzzServer, field: str, method: str, template: pb.EmbedRequest
) -> None:
    wire = template.SerializeToString()
    assert wire.count(MARKER.encode()) == 1
    payload = wire.replace(MARKER.encode(), NOT_UTF8)
    code, details = await check(fuzz.stubs, lambda: _raw_call(fuzz.channel, method, payload), writes=False)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("requests[0]:" if method.endswith("/Ingest") else "request:"), details
    assert "UTF-8" in details


async def test_invalid_utf8_after_good_ingest_messages_keeps_them(fuzz: FuzzServer) -> None:
    good = pb.IngestRequest(
        documents=[pb.Document(id="utf8-good", text="Stored before the broken message.")]
    ).SerializeToString()
    broken = (
        pb.IngestRequest(documents=[pb.Document(id="utf8-bad", text=MARKER)])
        .SerializeToString()
        .replace(MARKER.encode(), NOT_UTF8)
    )

    async def stream() -> AsyncIterator[bytes]:
        yield good
        yield broken

    size, version = await _index(fuzz.stubs)
    code, details = await _status_of(
        fuzz.channel.stream_unary("/rag_grpc.v1.DocumentService/Ingest")(stream())
    )
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1]")
    assert await _index(fuzz.stubs) == (size + 1, version + 1)


async def test_zz_the_log_of_everything_accepted_replays_to_the_same_index(
    fuzz: FuzzServer, tmp_path: Path
) -> None:
    """Runs last in this module: hostile documents that were stored must survive a crash exactly."""
    live = await fuzz.store.export_state()
    crashed = tmp_path / "crashed"
    shutil.copytree(fuzz.data_dir, crashed, ignore=shutil.ignore_patterns("LOCK"))
    async with DurableVectorStore(
        FaissVectorStore(fuzz.store.dimension, "cpu"), crashed, snapshot_interval_s=0
    ) as replayed:
        state = await replayed.export_state()
    assert state.version == live.version
    assert {d.id: d for d in state.documents} == {d.id: d for d in live.documents}
