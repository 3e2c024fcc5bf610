"""The write-ahead log: every write is appended and fsynced here before it is applied and acknowledged.

Layout: segments `wal-<first version, 20 digits>.log` in the data directory, each an 8-byte magic
followed by frames (see codec.py) whose payload is one record:

    op (u8: 1 upsert, 2 delete) | index version it produces (u64) | JSON length (u32) | JSON | vectors

An upsert's JSON holds the dimension and the documents (id, text, metadata) and its vectors follow
as float32, so replay needs no embedder; a delete's JSON holds the ids. A snapshot at version V
rotates to a new segment starting at V+1, and once the snapshot is durable the older segments go.

A crash mid-append leaves a torn last record: on start-up it is found by its length or checksum,
cut off with one warning, and the log continues from the last whole record. Damage followed by a
whole record is not a torn tail: acknowledged writes lie beyond it, so start-up stops instead.
"""

from __future__ import annotations

import itertools
import os
import struct
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from rag_grpc.domain import Document, FloatMatrix
from rag_grpc.storage import codec
from rag_grpc.storage.files import StorageCorrupted, create_durably, sync_directory, sync_file, write_all

log = structlog.get_logger(__name__)

SEGMENT_MAGIC = b"RAGWAL01"
_RECORD_HEADER = struct.Struct("<BQI")
_UPSERT, _DELETE = 1, 2


@dataclass(frozen=True, slots=True)
class UpsertRecord:
    version: int
    documents: list[Document]
    vectors: FloatMatrix


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    version: int
    ids: list[str]


WalRecord = UpsertRecord | DeleteRecord


def encode_record(record: WalRecord) -> bytes:
    if isinstance(record, UpsertRecord):
        body = codec.encode_json(
            {"dimension": record.vectors.shape[1], "documents": codec.documents_to_rows(record.documents)}
        )
        payload = [
            _RECORD_HEADER.pack(_UPSERT, record.version, len(body)),
            body,
            codec.vectors_to_bytes(record.vectors),
        ]
    else:
        body = codec.encode_json({"ids": list(record.ids)})
        payload = [_RECORD_HEADER.pack(_DELETE, record.version, len(body)), body]
    return codec.frame(b"".join(payload))


def decode_record(payload: bytes) -> WalRecord:
    op, version, body_length = _RECORD_HEADER.unpack_from(payload)
    body_end = _RECORD_HEADER.size + body_length
    body = codec.decode_json(memoryview(payload)[_RECORD_HEADER.size : body_end])
    assert isinstance(body, dict)
    if op == _UPSERT:
        documents = codec.documents_from_rows(body["documents"])
        vectors = codec.vectors_from_bytes(
            memoryview(payload)[body_end:], len(documents), int(body["dimension"])
        )
        return UpsertRecord(version=version, documents=documents, vectors=vectors)
    if op == _DELETE:
        return DeleteRecord(version=version, ids=[str(i) for i in body["ids"]])
    raise ValueError(f"unknown record type {op}")


def segment_path(directory: Path, first_version: int) -> Path:
    return directory / f"wal-{first_version:020d}.log"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first version, path), oldest first."""
    segments = []
    for path in directory.glob("wal-*.log"):
        with suppress(ValueError):
            segments.append((int(path.stem.removeprefix("wal-")), path))
    return sorted(segments)


@dataclass(frozen=True, slots=True)
class _Scan:
    records: list[WalRecord]
    valid_bytes: int
    problem: str | None = None
    # A whole record follows the damage: the damage is not a torn tail.
    records_after_problem: bool = False


def _read_frame(data: bytes, offset: int) -> tuple[WalRecord | None, int, str | None]:
    """(record, offset after it, problem); the record is None when there is a problem."""
    header = data[offset : offset + codec.FRAME_HEADER.size]
    if len(header) < codec.FRAME_HEADER.size:
        return None, offset, f"{len(header)} bytes of a record header"
    length, _ = codec.FRAME_HEADER.unpack(header)
    end = offset + codec.FRAME_HEADER.size + length
    if length > codec.MAX_FRAME_BYTES or end > len(data):
        return None, offset, f"a record of {length} bytes with {len(data) - offset - len(header)} bytes left"
    payload = data[offset + codec.FRAME_HEADER.size : end]
    if not codec.frame_checksum_ok(header, payload):
        return None, end, "a checksum mismatch"
    try:
        return decode_record(payload), end, None
    except (ValueError, KeyError, TypeError, AssertionError, struct.error) as exc:
        return None, end, f"an undecodable record ({exc})"


def scan_segment(path: Path) -> _Scan:
    data = path.read_bytes()
    if not data.startswith(SEGMENT_MAGIC):
        return _Scan(
            [], 0, "a missing or damaged segment header", records_after_problem=len(data) > len(SEGMENT_MAGIC)
        )
    records: list[WalRecord] = []
    offset = len(SEGMENT_MAGIC)
    while offset < len(data):
        record, next_offset, problem = _read_frame(data, offset)
        if problem is not None:
            # Can the log be read on past the damage? Then acknowledged records would be lost by cutting here.
            after = (
                next_offset > offset and next_offset < len(data) and _read_frame(data, next_offset)[2] is None
            )
            return _Scan(records, offset, f"{problem} at byte {offset}", records_after_problem=after)
        assert record is not None
        records.append(record)
        offset = next_offset
    return _Scan(records, offset)


def read_segment(path: Path, is_last: bool) -> list[WalRecord]:
    """The records of one segment. A torn tail of the last segment is cut off (one warning); any other
    damage raises StorageCorrupted."""
    scan = scan_segment(path)
    if scan.problem is None:
        return scan.records
    if not is_last or scan.records_after_problem or scan.valid_bytes == 0:
        raise StorageCorrupted(
            f"{path}: {scan.problem}, with acknowledged records beyond it or in later segments; "
            "refusing to start rather than drop them (move the file aside to start without them)"
        )
    discarded = path.stat().st_size - scan.valid_bytes
    log.warning(
        "wal_tail_discarded",
        path=str(path),
        offset=scan.valid_bytes,
        discarded_bytes=discarded,
        reason=scan.problem,
        kept_records=len(scan.records),
    )
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, scan.valid_bytes)
        sync_file(fd)
    finally:
        os.close(fd)
    return scan.records


class WriteAheadLog:
    """Appends to the newest segment. Not thread-safe: exactly one worker thread calls it."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd: int | None = None
        self._segment_start = 0
        self._size = 0
        self.bytes_since_rotation = 0

    def open(self, next_version: int) -> None:
        """Continues the newest segment, or starts one at `next_version` when there is none."""
        segments = list_segments(self._directory)
        if segments and segments[-1][0] > next_version:
            raise StorageCorrupted(
                f"{segments[-1][1]} starts at version {segments[-1][0]}, "
                f"but recovery ended at {next_version - 1}"
            )
        if segments:
            self._open_segment(*segments[-1])
        else:
            self._start_segment(next_version)

    def append(self, record: WalRecord) -> None:
        """Returns once the record is on stable storage; on failure, cuts the file back to its last record."""
        assert self._fd is not None, "write-ahead log is not open"
        data = encode_record(record)
        try:
            write_all(self._fd, data)
            sync_file(self._fd)
        except OSError:
            with suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.bytes_since_rotation += len(data)

    def rotate(self, next_version: int) -> None:
        """Starts a new segment at `next_version`; every record before it is in older segments."""
        if next_version == self._segment_start:
            return  # the current segment is still empty and already starts there
        self._start_segment(next_version)

    def drop_segments_through(self, version: int) -> int:
        """Removes the segments holding only records at or below `version`: a durable snapshot covers them."""
        dropped = 0
        segments = list_segments(self._directory)
        # A segment ends where the next one starts, so the next one's start says what it holds.
        for (_, path), (next_start, _) in itertools.pairwise(segments):
            if next_start <= version + 1:
                path.unlink(missing_ok=True)
                dropped += 1
        if dropped:
            sync_directory(self._directory)
        return dropped

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _start_segment(self, first_version: int) -> None:
        path = segment_path(self._directory, first_version)
        create_durably(path, SEGMENT_MAGIC)
        self._open_segment(first_version, path)
        self.bytes_since_rotation = 0

    def _open_segment(self, first_version: int, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.close()
        self._fd = fd
        self._segment_start = first_version
        self._size = os.fstat(fd).st_size
