"""API-key authentication: every way to present a key wrongly, rights per role, open health/reflection,
and the caller's identity reaching the handler. After each refusal the server serves others."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from rag_grpc.api.call_context import current_caller
from rag_grpc.api.interceptors.chain import interceptor_chain
from rag_grpc.api.interceptors.drain import DrainInterceptor
from rag_grpc.engines import Engines
from rag_grpc.metrics import GrpcMetrics
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.api.interceptors.conftest import (
    ALICE_KEY,
    API_KEYS,
    READER_KEY,
    RunningServer,
    serving,
)
from tests.helpers import bearer, collect, doc, expect_status

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
async def secured(engines: Engines, settings: Settings) -> AsyncIterator[RunningServer]:
    async with serving(engines, settings, api_keys=API_KEYS) as running:
        yield running


async def _still_serves(server: RunningServer) -> None:
    response = await server.stubs.info.Info(pb.InfoRequest(), metadata=bearer(ALICE_KEY))
    assert response.embedder.dimension == 384


async def test_good_key_is_served(secured: RunningServer) -> None:
    await _still_serves(secured)
    messages = await collect(
        secured.stubs.generate.Generate(
            pb.GenerateRequest(prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=2)),
            metadata=bearer(ALICE_KEY),
        )
    )
    assert messages[-1].HasField("final")


@pytest.mark.parametrize(
    ("metadata", "reason", "detail"),
    [
        ((), "missing", "missing"),
        ((("authorization", "Bearer not-a-key-that-anyone-has-0000"),), "unknown_key", "unknown API key"),
        ((("authorization", f"Basic {ALICE_KEY}"),), "malformed", "malformed"),
        ((("authorization", "Bearer"),), "malformed", "malformed"),
        ((("authorization", "Bearer "),), "malformed", "malformed"),
        ((("authorization", f"Bearer  {ALICE_KEY}"),), "malformed", "malformed"),
        ((("authorization", f"Bearer {ALICE_KEY} extra"),), "malformed", "malformed"),
        ((("authorization", f"Bearer {ALICE_KEY};drop!"),), "malformed", "malformed"),
        ((("authorization", "Bearer " + "k" * 600),), "malformed", "malformed"),
        ((("authorization", ALICE_KEY),), "malformed", "malformed"),
        (
            (("authorization", f"Bearer {ALICE_KEY}"), ("authorization", f"Bearer {ALICE_KEY}")),
            "several",
            "several",
        ),
        (
            (("authorization", f"Bearer {ALICE_KEY}"), ("authorization", "Bearer other-0000000000000000")),
            "several",
            "several",
        ),
    ],
    ids=[
        "no key",
        "unknown key",
        "basic scheme",
        "bearer without key",
        "bearer empty",
        "two spaces",
        "trailing words",
        "punctuation",
        "very long",
        "no scheme",
        "same key twice",
        "two keys",
    ],
)
async def test_bad_credentials_are_unauthenticated(
    secured: RunningServer, metadata: tuple[tuple[str, str], ...], reason: str, detail: str
) -> None:
    before = secured.sample("rag_auth_failures_total", reason=reason)
    error = await expect_status(secured.stubs.info.Info(pb.InfoRequest(), metadata=metadata), UNAUTHENTICATED)
    assert detail in (error.details() or "")
    assert ALICE_KEY not in (error.details() or "")
    assert secured.sample("rag_auth_failures_total", reason=reason) == before + 1
    await _still_serves(secured)


async def test_streaming_calls_are_refused_before_any_message(secured: RunningServer) -> None:
    call = secured.stubs.generate.Generate(pb.GenerateRequest(prompt="hi"))
    await expect_status(collect(call), UNAUTHENTICATED)


async def test_bearer_scheme_is_case_insensitive(secured: RunningServer) -> None:
    await secured.stubs.info.Info(pb.InfoRequest(), metadata=(("authorization", f"bearer {READER_KEY}"),))


async def test_read_only_key_reads_but_may_not_write(secured: RunningServer, isolated_tag: str) -> None:
    reader = bearer(READER_KEY)
    embedded = await secured.stubs.embed.Embed(pb.EmbedRequest(texts=["hello"]), metadata=reader)
    assert len(embedded.embeddings) == 1
    size = (await secured.stubs.info.Info(pb.InfoRequest(), metadata=reader)).index.size

    document = doc(f"auth-{isolated_tag}", "a document the reader may not write", test=isolated_tag)
    denied = grpc.StatusCode.PERMISSION_DENIED
    error = await expect_status(
        secured.stubs.documents.Upsert(pb.UpsertRequest(documents=[document]), metadata=reader), denied
    )
    assert "reader" in (error.details() or "") and "read-only" in (error.details() or "")
    await expect_status(
        secured.stubs.documents.Delete(pb.DeleteRequest(ids=[document.id]), metadata=reader), denied
    )

    async def ingest_requests() -> AsyncIterator[pb.IngestRequest]:
        yield pb.IngestRequest(documents=[document])

    await expect_status(secured.stubs.documents.Ingest(ingest_requests(), metadata=reader), denied)
    admin = pb_grpc.AdminServiceStub(secured.channel)
    await expect_status(admin.Snapshot(pb.SnapshotRequest(), metadata=reader), denied)
    assert (await secured.stubs.info.Info(pb.InfoRequest(), metadata=reader)).index.size == size
    assert secured.sample("rag_auth_failures_total", reason="permission") >= 4

    written = await secured.stubs.documents.Upsert(
        pb.UpsertRequest(documents=[document]), metadata=bearer(ALICE_KEY)
    )
    assert written.upserted == 1


async def test_huge_metadata_is_refused_and_the_server_goes_on(secured: RunningServer) -> None:
    # grpc itself refuses metadata over its hard limit (16 KiB) before any interceptor runs (between the
    # soft limit of 8 KiB and the hard one it refuses at random).
    huge = (("authorization", f"Bearer {ALICE_KEY}"), ("x-padding", "p" * 20_000))
    await expect_status(
        secured.stubs.info.Info(pb.InfoRequest(), metadata=huge), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # Under the soft limit but an absurd key: malformed, without hashing it.
    long_key = (("authorization", "Bearer " + "a" * 6_000),)
    await expect_status(secured.stubs.info.Info(pb.InfoRequest(), metadata=long_key), UNAUTHENTICATED)
    await _still_serves(secured)


async def test_health_and_reflection_are_open_by_default(secured: RunningServer) -> None:
    response = await secured.stubs.health.Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = {
        s.name async for r in stub.ServerReflectionInfo(requests()) for s in r.list_services_response.service
    }
    assert "rag_grpc.v1.InfoService" in names


async def test_health_and_reflection_can_require_a_key(engines: Engines, settings: Settings) -> None:
    async with serving(engines, settings, api_keys=API_KEYS, auth_open_health_and_reflection=False) as closed:
        await expect_status(closed.stubs.health.Check(health_pb2.HealthCheckRequest()), UNAUTHENTICATED)
        response = await closed.stubs.health.Check(
            health_pb2.HealthCheckRequest(), metadata=bearer(READER_KEY)
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_without_keys_authentication_is_off(stubs) -> None:  # type: ignore[no-untyped-def]
    # The session server runs the default chain, as `make serve` does.
    await stubs.info.Info(pb.InfoRequest())


async def test_handlers_see_the_caller_and_never_the_key(settings: Settings) -> None:
    """A handler of our own behind the real chain reads current_caller()."""
    seen: list[str] = []

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = current_caller()
        seen.append(caller.name)
        return f"{caller.name}:{caller.role.value}".encode()

    chain = interceptor_chain(
        settings.with_overrides(api_keys=API_KEYS),
        GrpcMetrics(CollectorRegistry()),
        None,
        DrainInterceptor(),
    )
    server = grpc.aio.server(interceptors=chain)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Probe", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Probe/Who")
            assert await call(b"", metadata=bearer(READER_KEY)) == b"reader:read-only"
            assert await call(b"", metadata=bearer(ALICE_KEY)) == b"alice:read-write"
            await expect_status(call(b""), UNAUTHENTICATED)
    finally:
        await server.stop(0)
    assert seen == ["reader", "alice"]


async def test_ingest_cli_sends_a_key_from_a_file(
    secured: RunningServer, tmp_path: Path, isolated_tag: str
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "records.jsonl").write_text(
        f'{{"id": "{isolated_tag}-cli", "text": "Keys travel in files.", "metadata": {{"test": "{isolated_tag}"}}}}\n'
    )

    async def ingest(key: str | None) -> tuple[int, str]:
        extra = []
        if key is not None:
            (tmp_path / "key").write_text(key + "\n")
            extra = ["--api-key-file", str(tmp_path / "key")]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rag_grpc.cli",
            "ingest",
            str(tmp_path / "docs"),
            "--target",
            secured.target,
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode or 0, out.decode() + err.decode()

    assert await ingest(None) == (
        1,
        "ingest failed: UNAUTHENTICATED: missing 'authorization: Bearer <key>' metadata\n",
    )
    code, output = await ingest(READER_KEY)
    assert code == 1 and "PERMISSION_DENIED" in output
    code, output = await ingest(ALICE_KEY)
    assert code == 0 and "ingested 1 documents" in output
