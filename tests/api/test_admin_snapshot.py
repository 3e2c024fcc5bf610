"""AdminService.Snapshot and `rag-grpc snapshot`, on an in-process server whose index is durable."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.engines.factory import with_search_batching
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.storage import DurableVectorStore
from rag_grpc.storage.snapshot import list_snapshots
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.conftest import Stubs
from tests.helpers import doc, expect_status


async def _cli_snapshot(target: str) -> tuple[int | None, str, str]:
    """`rag-grpc snapshot` as a process; awaited, since the server under test runs on this event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rag_grpc.cli", "snapshot", "--target", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, stdout.decode(), stderr.decode()


def _durable(data_dir: Path, dimension: int) -> DurableVectorStore:
    return DurableVectorStore(
        FaissVectorStore(dimension, "cpu"), data_dir, snapshot_interval_s=0, snapshot_wal_max_bytes=0
    )


@pytest.fixture
async def durable_target(engines: Engines, settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """A second server sharing the session's models, with its index in tmp_path/data, stacked as the
    factory stacks it: the search batcher around the durable store (snapshot() passes through it)."""
    durable = _durable(tmp_path / "data", engines.embedder.dimension)
    async with durable, with_search_batching(settings.engines, durable) as store:
        service = RagService(Engines(engines.embedder, store, engines.generators), settings)
        server = RagServer(settings, service)
        port = await server.start()
        yield f"127.0.0.1:{port}"
        await server.stop(0)


async def test_an_in_memory_server_cannot_snapshot(stubs: Stubs) -> None:
    error = await expect_status(
        stubs.admin.Snapshot(pb.SnapshotRequest()), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (error.details() or "").startswith("snapshot:")


async def test_snapshot_rpc_and_cli(durable_target: str, engines: Engines, tmp_path: Path) -> None:
    async with grpc.aio.insecure_channel(durable_target) as channel:
        documents = pb_grpc.DocumentServiceStub(channel)
        admin = pb_grpc.AdminServiceStub(channel)
        await documents.Upsert(
            pb.UpsertRequest(documents=[doc("snap-1", "Kept in a snapshot."), doc("snap-2", "Me too.")])
        )
        written = await admin.Snapshot(pb.SnapshotRequest())
        assert (written.index_version, written.documents, written.written) == (
            1,
            2,
            True,
        ) and written.bytes > 0
        assert [v for v, _ in list_snapshots(tmp_path / "data")] == [1]
        again = await admin.Snapshot(pb.SnapshotRequest())
        assert (again.index_version, again.written) == (1, False)
        await documents.Delete(pb.DeleteRequest(ids=["snap-2"]))

    returncode, stdout, stderr = await _cli_snapshot(durable_target)
    assert returncode == 0, stderr
    assert "snapshot written: index version 2, 1 documents" in stdout
    assert [v for v, _ in list_snapshots(tmp_path / "data")] == [2]


async def test_cli_reports_a_refused_snapshot(target: str) -> None:
    returncode, _, stderr = await _cli_snapshot(target)
    assert returncode == 1 and "FAILED_PRECONDITION" in stderr
