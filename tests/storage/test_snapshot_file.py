"""Snapshot files: exact round trip, and any damage is detected rather than loaded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from rag_grpc.domain import Document, StoreState
from rag_grpc.storage.files import StorageCorrupted, remove_stale_temporaries
from rag_grpc.storage.snapshot import list_snapshots, read_snapshot, remove_snapshots_before, write_snapshot


def _state(count: int, version: int = 7) -> StoreState:
    documents = [Document(f"id-{i}", f"text {i} ✓ 𝄞", {"n": str(i)}) for i in range(count)]
    vectors = np.random.default_rng(count).normal(size=(count, 5)).astype(np.float32)
    return StoreState(documents=documents, vectors=vectors, version=version)


def _assert_same(got: StoreState, want: StoreState) -> None:
    assert got.version == want.version and got.documents == want.documents
    assert np.array_equal(got.vectors, want.vectors) and got.vectors.shape == want.vectors.shape


@pytest.mark.parametrize("count", [0, 1, 50])
def test_round_trip(tmp_path: Path, count: int) -> None:
    state = _state(count)
    size = write_snapshot(tmp_path, state)
    ((version, path),) = list_snapshots(tmp_path)
    assert version == 7 and path.stat().st_size == size
    assert not list(tmp_path.glob("*.tmp"))
    _assert_same(read_snapshot(path), state)


def test_every_kind_of_damage_is_detected(tmp_path: Path) -> None:
    write_snapshot(tmp_path, _state(20))
    ((_, path),) = list_snapshots(tmp_path)
    original = path.read_bytes()
    rng = random.Random(3)
    damaged = [original[:cut] for cut in (0, 5, 20, len(original) // 2, len(original) - 1)]
    damaged.append(original + b"\0")
    for position in rng.sample(range(len(original)), 40):
        flipped = bytearray(original)
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.append(bytes(flipped))
    for data in damaged:
        path.write_bytes(data)
        with pytest.raises(StorageCorrupted):
            read_snapshot(path)


def test_older_snapshots_and_crash_leftovers_are_removed(tmp_path: Path) -> None:
    for version in (3, 5, 9):
        write_snapshot(tmp_path, _state(2, version))
    (tmp_path / "snapshot-00000000000000000011.snap.tmp").write_bytes(b"half a snapshot")
    assert [v for v, _ in list_snapshots(tmp_path)] == [3, 5, 9]
    remove_snapshots_before(tmp_path, 9)
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-00000000000000000009.snap"]
