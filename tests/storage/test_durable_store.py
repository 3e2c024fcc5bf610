"""DurableVectorStore around the real FAISS store (small random vectors, no models).

A "crash" here is a copy of the data directory taken while the store runs: every acknowledged write
has been fsynced by then, so the copy holds exactly what a crash at that moment would leave.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest

from rag_grpc.domain import Document, SearchQuery, StoreState
from rag_grpc.engines.base import Snapshotter, VectorStore
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.errors import NotFound
from rag_grpc.storage import DurableVectorStore, StorageCorrupted
from rag_grpc.storage.snapshot import list_snapshots
from rag_grpc.storage.wal import list_segments

DIMENSION = 8


def _store(directory: Path, dimension: int = DIMENSION, **options: float) -> DurableVectorStore:
    options.setdefault("snapshot_interval_s", 0)
    options.setdefault("snapshot_wal_max_bytes", 0)
    return DurableVectorStore(FaissVectorStore(dimension, "cpu"), directory, **options)  # type: ignore[arg-type]


def _vectors(count: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _docs(*ids: str) -> list[Document]:
    return [Document(i, f"text of {i}", {"id": i, "group": i[:1]}) for i in ids]


def _crash_copy(directory: Path) -> Path:
    copy = directory.with_name(directory.name + "-crashed")
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("LOCK"))
    return copy


def _assert_same(got: StoreState, want: StoreState) -> None:
    assert got.version == want.version
    assert {d.id: d for d in got.documents} == {d.id: d for d in want.documents}
    by_id = {d.id: row for d, row in zip(got.documents, got.vectors, strict=True)}
    for document, row in zip(want.documents, want.vectors, strict=True):
        assert np.array_equal(by_id[document.id], row)


async def test_it_is_a_vector_store_that_can_snapshot(tmp_path: Path) -> None:
    async with _store(tmp_path) as store:
        assert isinstance(store, VectorStore) and isinstance(store, Snapshotter)


async def test_acknowledged_writes_survive_a_crash_and_a_clean_restart(tmp_path: Path) -> None:
    async with _store(tmp_path / "data") as store:
        assert await store.upsert(_docs("a1", "a2", "b1"), _vectors(3, 1)) == 1
        assert await store.delete(["a2"]) == 2
        assert await store.upsert(_docs("a1", "c1"), _vectors(2, 2)) == 3  # replaces a1
        live = await store.export_state()
        crashed = _crash_copy(tmp_path / "data")
    for directory in (crashed, tmp_path / "data"):  # replay of the log alone; the final snapshot
        async with _store(directory) as reopened:
            _assert_same(await reopened.export_state(), live)
            (result,) = await reopened.search(
                [SearchQuery(vector=live.vectors[0], top_k=1, filter={"group": "a"})]
            )
            assert [h.id for h in result.hits] == ["a1"] and result.index_version == 3
            assert await reopened.upsert(_docs("d1"), _vectors(1, 3)) == 4  # the version goes on from there


async def test_concurrent_writes_keep_one_order_in_log_and_index(tmp_path: Path) -> None:
    rng = random.Random(5)
    async with _store(tmp_path / "data") as store:
        ids = [f"k{i}" for i in range(30)]
        await store.upsert(_docs(*ids), _vectors(30, 0))

        async def writer(n: int) -> None:
            for step in range(6):
                if rng.random() < 0.3:
                    with suppress(NotFound):
                        await store.delete([rng.choice(ids)])
                else:
                    chosen = rng.sample(ids, 3)
                    await store.upsert(_docs(*chosen), _vectors(3, n * 100 + step))

        await asyncio.gather(*(writer(n) for n in range(12)))
        live = await store.export_state()
        crashed = _crash_copy(tmp_path / "data")
    async with _store(crashed) as reopened:
        _assert_same(await reopened.export_state(), live)


async def test_a_cancelled_write_is_applied_whole_or_not_at_all(tmp_path: Path) -> None:
    async with _store(tmp_path / "data") as store:
        tasks = [asyncio.create_task(store.upsert(_docs(f"x{i}"), _vectors(1, i))) for i in range(20)]
        await asyncio.sleep(0.005)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The next write still gets the next version, so nothing logged was left unapplied.
        version = await store.upsert(_docs("after"), _vectors(1, 99))
        assert version == store.version
        live = await store.export_state()
        crashed = _crash_copy(tmp_path / "data")
    async with _store(crashed) as reopened:
        _assert_same(await reopened.export_state(), live)


async def test_a_delete_of_unknown_ids_logs_and_changes_nothing(tmp_path: Path) -> None:
    async with _store(tmp_path) as store:
        await store.upsert(_docs("a"), _vectors(1, 0))
        ((_, segment),) = list_segments(tmp_path)
        size = segment.stat().st_size
        with pytest.raises(NotFound, match="ids:"):
            await store.delete(["a", "ghost"])
        assert segment.stat().st_size == size and store.version == 1 and store.size == 1


async def test_a_snapshot_drops_the_log_it_covers_and_keeps_the_version(tmp_path: Path) -> None:
    async with _store(tmp_path) as store:
        for n in range(5):
            await store.upsert(_docs(f"s{n}"), _vectors(1, n))
        info = await store.snapshot()
        assert (info.index_version, info.documents, info.written) == (5, 5, True) and info.bytes > 0
        assert [v for v, _ in list_snapshots(tmp_path)] == [5]
        assert [first for first, _ in list_segments(tmp_path)] == [6]
        assert (await store.snapshot()).written is False
        await store.delete(["s0"])
        assert (await store.snapshot()).index_version == 6
        assert [v for v, _ in list_snapshots(tmp_path)] == [6]
    async with _store(tmp_path) as reopened:
        assert (reopened.version, reopened.size) == (6, 4)


async def test_snapshots_follow_the_log_size(tmp_path: Path) -> None:
    async with _store(tmp_path, snapshot_wal_max_bytes=1_000) as store:
        for n in range(10):
            await store.upsert(_docs(f"w{n}"), _vectors(1, n))
        for _ in range(100):
            if list_snapshots(tmp_path):
                break
            await asyncio.sleep(0.02)
        assert list_snapshots(tmp_path)


async def test_a_crash_after_rotating_but_before_the_snapshot_loses_nothing(tmp_path: Path) -> None:
    async with _store(tmp_path / "data") as store:
        await store.upsert(_docs("r1", "r2"), _vectors(2, 1))
        await store.snapshot()
        await store.upsert(_docs("r3"), _vectors(1, 2))
        live = await store.export_state()
        crashed = _crash_copy(tmp_path / "data")
    # What a crash between rotation and rename leaves: the old snapshot, both segments, a temporary file.
    (crashed / "snapshot-00000000000000000009.snap.tmp").write_bytes(b"partial")
    async with _store(crashed) as reopened:
        _assert_same(await reopened.export_state(), live)
    assert not list(crashed.glob("*.tmp"))


async def test_a_corrupt_snapshot_stops_start_up(tmp_path: Path) -> None:
    async with _store(tmp_path) as store:
        await store.upsert(_docs("c1"), _vectors(1, 1))
    ((_, path),) = list_snapshots(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(StorageCorrupted):
        async with _store(tmp_path):
            pass


async def test_another_embedder_dimension_is_refused(tmp_path: Path) -> None:
    async with _store(tmp_path) as store:
        await store.upsert(_docs("d1"), _vectors(1, 1))
    with pytest.raises(StorageCorrupted, match="dimensional"):
        async with _store(tmp_path, dimension=16):
            pass


async def test_one_data_dir_serves_one_process(tmp_path: Path) -> None:
    async with _store(tmp_path):
        with pytest.raises(RuntimeError, match="in use"):
            async with _store(tmp_path):
                pass
    async with _store(tmp_path):  # released at exit
        pass
