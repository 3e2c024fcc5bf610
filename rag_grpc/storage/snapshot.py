"""Snapshots: the whole store at one version in one file, `snapshot-<version, 20 digits>.snap`.

    magic "RAGSNAP1" | header length (u32) | header JSON | documents JSON | vectors (float32) | CRC32 (u32)

The header holds the format, version, document count, dimension and the documents' byte length; the
CRC covers every byte before it. A snapshot is written to a temporary file, fsynced, renamed into
place and the directory fsynced, so a crash leaves either the old snapshot or the new one, never half
of one. The newest snapshot is the one start-up loads.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np

from rag_grpc.domain import StoreState
from rag_grpc.storage import codec
from rag_grpc.storage.files import StorageCorrupted, sync_directory, sync_file

SNAPSHOT_MAGIC = b"RAGSNAP1"
_FORMAT = 1
_U32 = struct.Struct("<I")


def snapshot_path(directory: Path, version: int) -> Path:
    return directory / f"snapshot-{version:020d}.snap"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(version, path), oldest first."""
    snapshots = []
    for path in directory.glob("snapshot-*.snap"):
        with suppress(ValueError):
            snapshots.append((int(path.stem.removeprefix("snapshot-")), path))
    return sorted(snapshots)


def write_snapshot(directory: Path, state: StoreState) -> int:
    """Writes `state` durably and atomically; returns the file's size in bytes."""
    documents = codec.encode_json(codec.documents_to_rows(state.documents))
    count, dimension = state.vectors.shape
    header = codec.encode_json(
        {
            "format": _FORMAT,
            "version": state.version,
            "documents": count,
            "dimension": dimension,
            "documents_bytes": len(documents),
        }
    )
    path = snapshot_path(directory, state.version)
    staging = path.with_name(path.name + ".tmp")
    checksum = 0
    size = 0
    with open(staging, "wb") as file:
        for part in (
            SNAPSHOT_MAGIC,
            _U32.pack(len(header)),
            header,
            documents,
            memoryview(codec.vectors_to_bytes(state.vectors)),
        ):
            file.write(part)
            checksum = zlib.crc32(part, checksum)
            size += len(part)
        file.write(_U32.pack(checksum))
        file.flush()
        sync_file(file.fileno())
    os.replace(staging, path)
    sync_directory(directory)
    return size + _U32.size


def read_snapshot(path: Path) -> StoreState:
    """Raises StorageCorrupted if the file is damaged."""
    try:
        with open(path, "rb") as file:
            return _read(file, path)
    except StorageCorrupted:
        raise
    except (ValueError, KeyError, TypeError, AssertionError, struct.error) as exc:
        raise StorageCorrupted(f"{path}: not a readable snapshot ({exc})") from exc


def _read(file: io.BufferedIOBase, path: Path) -> StoreState:
    checksum = 0

    def take(size: int) -> bytes:
        nonlocal checksum
        data = file.read(size)
        if len(data) != size:
            raise StorageCorrupted(f"{path}: ends early (wanted {size} bytes, found {len(data)})")
        checksum = zlib.crc32(data, checksum)
        return data

    if take(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
        raise StorageCorrupted(f"{path}: not a snapshot file")
    (header_length,) = _U32.unpack(take(_U32.size))
    header = codec.decode_json(take(header_length))
    assert isinstance(header, dict) and header["format"] == _FORMAT, "unknown snapshot format"
    count, dimension = int(header["documents"]), int(header["dimension"])
    documents = codec.documents_from_rows(codec.decode_json(take(int(header["documents_bytes"]))))
    # Checked before allocating: a damaged count must not ask for terabytes before the checksum is read.
    if (
        count < 0
        or dimension < 1
        or count * dimension * 4 + _U32.size != os.fstat(file.fileno()).st_size - file.tell()
    ):
        raise StorageCorrupted(f"{path}: the vectors do not fill the rest of the file")
    vectors = np.empty((count, dimension), dtype=np.float32)
    raw = vectors.reshape(-1).view(np.uint8).data  # a writable memoryview of the array's bytes
    if file.readinto(raw) != len(raw):
        raise StorageCorrupted(f"{path}: ends inside the vectors")
    checksum = zlib.crc32(raw, checksum)
    trailer = file.read(_U32.size + 1)
    if len(trailer) != _U32.size or _U32.unpack(trailer)[0] != checksum:
        raise StorageCorrupted(f"{path}: checksum mismatch or trailing bytes")
    if len(documents) != count:
        raise StorageCorrupted(f"{path}: header says {count} documents, found {len(documents)}")
    if not np.little_endian:
        vectors = vectors.byteswap()
    return StoreState(documents=documents, vectors=vectors, version=int(header["version"]))


def remove_snapshots_before(directory: Path, version: int) -> None:
    removed = False
    for snapshot_version, path in list_snapshots(directory):
        if snapshot_version < version:
            path.unlink(missing_ok=True)
            removed = True
    if removed:
        sync_directory(directory)
