"""The write-ahead log on its own: records round-trip exactly, a torn or scrambled tail is cut off with
one warning and nothing before it is lost, and damage that is not a tail stops start-up."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from rag_grpc.domain import Document
from rag_grpc.storage.files import StorageCorrupted
from rag_grpc.storage.wal import (
    DeleteRecord,
    UpsertRecord,
    WalRecord,
    WriteAheadLog,
    encode_record,
    list_segments,
    read_segment,
)

DIMENSION = 4


def _upsert(version: int, *ids: str) -> UpsertRecord:
    # Non-ASCII text and keys on purpose: the log must round-trip them byte for byte.
    documents = [Document(i, f"text of {i} – ünïcødé ☃ 𝄞", {"k": i, "ключ": "значение"}) for i in ids]  # noqa: RUF001
    vectors = np.random.default_rng(version).normal(size=(len(ids), DIMENSION)).astype(np.float32)
    return UpsertRecord(version, documents, vectors)


def _records() -> list[WalRecord]:
    return [_upsert(1, "a", "b"), DeleteRecord(2, ["a"]), _upsert(3, "c"), _upsert(4, "d", "e", "f")]


def _assert_same(got: list[WalRecord], want: list[WalRecord]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w) and g.version == w.version
        if isinstance(w, UpsertRecord):
            assert isinstance(g, UpsertRecord)
            assert g.documents == w.documents
            assert g.vectors.dtype == np.float32 and np.array_equal(g.vectors, w.vectors)
        else:
            assert g == w


def _write_log(directory: Path, records: list[WalRecord]) -> Path:
    wal = WriteAheadLog(directory)
    wal.open(records[0].version)
    for record in records:
        wal.append(record)
    wal.close()
    ((_, path),) = list_segments(directory)
    return path


def test_records_round_trip_exactly(tmp_path: Path) -> None:
    records = _records()
    path = _write_log(tmp_path, records)
    _assert_same(read_segment(path, is_last=True), records)


def test_a_lone_surrogate_round_trips(tmp_path: Path) -> None:
    record = UpsertRecord(
        1, [Document("s", "half a pair: \ud800", {"\udfff": "x"})], np.ones((1, DIMENSION), np.float32)
    )
    path = _write_log(tmp_path, [record])
    _assert_same(read_segment(path, is_last=True), [record])


@pytest.mark.parametrize("damage", ["truncate", "scramble", "truncate_and_scramble", "garbage_after"])
def test_a_damaged_last_record_is_cut_off_with_one_warning(tmp_path: Path, damage: str) -> None:
    records = _records()
    path = _write_log(tmp_path, records)
    last = len(encode_record(records[-1]))
    whole = path.stat().st_size
    keep = whole - last
    rng = random.Random(damage)
    data = bytearray(path.read_bytes())
    if damage in ("scramble", "truncate_and_scramble"):
        for _ in range(8):
            data[rng.randrange(keep, whole)] ^= 0xFF
    if damage in ("truncate", "truncate_and_scramble"):
        data = data[: keep + rng.randrange(1, last)]
    if damage == "garbage_after":
        keep = whole
        data += bytes(rng.randrange(256) for _ in range(13))
    path.write_bytes(bytes(data))

    with capture_logs() as logs:
        got = read_segment(path, is_last=True)
    want = records if damage == "garbage_after" else records[:-1]
    _assert_same(got, want)
    assert [entry["event"] for entry in logs] == ["wal_tail_discarded"]
    assert logs[0]["log_level"] == "warning" and logs[0]["offset"] == keep
    assert path.stat().st_size == keep  # cut back, so new records follow the last whole one
    with capture_logs() as logs:
        _assert_same(read_segment(path, is_last=True), want)
    assert logs == []


def test_a_tail_torn_at_any_byte_keeps_every_earlier_record(tmp_path: Path) -> None:
    records = _records()
    path = _write_log(tmp_path, records)
    original = path.read_bytes()
    last = len(encode_record(records[-1]))
    for cut in range(1, last):
        path.write_bytes(original[: len(original) - cut])
        with capture_logs() as logs:
            _assert_same(read_segment(path, is_last=True), records[:-1])
        assert len(logs) == 1, cut


def test_damage_with_whole_records_after_it_stops_start_up(tmp_path: Path) -> None:
    records = _records()
    path = _write_log(tmp_path, records)
    data = bytearray(path.read_bytes())
    second = 8 + len(encode_record(records[0]))
    data[second + 12] ^= 0x01  # inside the delete record's payload; two whole records follow
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted, match="refusing to start"):
        read_segment(path, is_last=True)
    assert path.read_bytes() == bytes(data)  # nothing was cut


def test_a_damaged_tail_in_an_older_segment_stops_start_up(tmp_path: Path) -> None:
    path = _write_log(tmp_path, _records())
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(StorageCorrupted):
        read_segment(path, is_last=False)


def test_rotation_and_dropping_covered_segments(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open(1)
    wal.append(_upsert(1, "a"))
    wal.append(_upsert(2, "b"))
    wal.rotate(3)
    wal.append(_upsert(3, "c"))
    wal.rotate(4)
    wal.rotate(4)  # still empty: no new segment
    assert [first for first, _ in list_segments(tmp_path)] == [1, 3, 4]
    assert wal.drop_segments_through(2) == 1  # segment 3 holds version 3, which no snapshot covers yet
    assert [first for first, _ in list_segments(tmp_path)] == [3, 4]
    assert wal.drop_segments_through(3) == 1
    wal.append(_upsert(4, "d"))
    wal.close()
    ((first, path),) = list_segments(tmp_path)
    assert first == 4 and [r.version for r in read_segment(path, is_last=True)] == [4]


def test_reopening_continues_the_newest_segment(tmp_path: Path) -> None:
    path = _write_log(tmp_path, _records()[:2])
    wal = WriteAheadLog(tmp_path)
    wal.open(3)
    wal.append(_upsert(3, "c"))
    wal.close()
    assert [r.version for r in read_segment(path, is_last=True)] == [1, 2, 3]
