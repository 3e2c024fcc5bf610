"""A crash mid-append leaves a torn last record. Here the log's last record is cut short and
scrambled by hand: the server still starts, warns once, serves every earlier document, and keeps
logging after the cut so later writes survive the next crash too."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from rag_grpc.storage.wal import encode_record, list_segments, scan_segment
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.storage.server_process import ServerProcess

pytestmark = pytest.mark.slow


def _documents(batch: int) -> list[pb.Document]:
    return [
        pb.Document(
            id=f"b{batch}-d{n}",
            text=f"Batch {batch}, note {n}, about tide pools.",
            metadata={"batch": str(batch)},
        )
        for n in range(3)
    ]


async def _upsert(target: str, batches: range) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DocumentServiceStub(channel)
        for batch in batches:
            await stub.Upsert(pb.UpsertRequest(documents=_documents(batch)))


async def _stored_batches(target: str) -> tuple[set[int], int]:
    async with grpc.aio.insecure_channel(target) as channel:
        retrieve = pb_grpc.RetrieveServiceStub(channel)
        hits = (await retrieve.Retrieve(pb.RetrieveRequest(text="tide pools", top_k=100))).hits
        info = (await pb_grpc.InfoServiceStub(channel).Info(pb.InfoRequest())).index
    by_batch: dict[int, set[str]] = {}
    for hit in hits:
        by_batch.setdefault(int(hit.metadata["batch"]), set()).add(hit.id)
    assert all(ids == {d.id for d in _documents(b)} for b, ids in by_batch.items())  # whole batches only
    return set(by_batch), info.version


def _tear_last_record(data_dir: Path) -> None:
    _, segment = list_segments(data_dir)[-1]
    last = len(encode_record(scan_segment(segment).records[-1]))
    data = bytearray(segment.read_bytes())
    start = len(data) - last
    rng = random.Random(7)
    for position in range(start, len(data)):
        data[position] = rng.randrange(256)
    segment.write_bytes(bytes(data[: start + last // 2]))


async def test_a_torn_and_scrambled_last_record_is_skipped_and_earlier_documents_served(
    tmp_path: Path,
) -> None:
    # No snapshots: every write stays in the log.
    server = ServerProcess(tmp_path, "--snapshot-interval-s", "0", "--snapshot-wal-max-bytes", "0")
    target = server.start()
    await _upsert(target, range(6))
    server.kill()
    _tear_last_record(server.data_dir)

    target = server.start()
    warnings = [e for e in server.events_since_start() if e["event"] == "wal_tail_discarded"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    assert await _stored_batches(target) == (set(range(5)), 5)  # batch 5 was the torn record

    await _upsert(target, range(6, 8))  # appended after the cut
    server.kill()
    target = server.start()
    assert not [e for e in server.events_since_start() if e["event"] == "wal_tail_discarded"]
    assert await _stored_batches(target) == ({0, 1, 2, 3, 4, 6, 7}, 7)
    assert server.stop() == 0
