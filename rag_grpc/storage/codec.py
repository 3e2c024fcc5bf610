"""Byte layouts shared by the write-ahead log and snapshots: documents as JSON, vectors as raw
little-endian float32, and checksummed frames (length, CRC32, payload)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from rag_grpc.domain import Document, FloatMatrix

# length of the payload, CRC32 over the length bytes and the payload
FRAME_HEADER = struct.Struct("<II")
# A length beyond this is damage, not a record: requests are capped far below it by max_message_bytes.
MAX_FRAME_BYTES = 1 << 30
_FLOAT32_LE = np.dtype("<f4")


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))) + payload


def frame_checksum_ok(header: bytes, payload: bytes) -> bool:
    checksum: int = FRAME_HEADER.unpack(header)[1]
    return zlib.crc32(payload, zlib.crc32(header[:4])) == checksum


def encode_json(value: object) -> bytes:
    # surrogatepass: a str that holds a lone surrogate (possible through the Python API) still round-trips.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def decode_json(data: bytes | memoryview) -> object:
    return json.loads(bytes(data).decode("utf-8", "surrogatepass"))


def documents_to_rows(documents: Sequence[Document]) -> list[list[object]]:
    return [[d.id, d.text, dict(d.metadata)] for d in documents]


def documents_from_rows(rows: object) -> list[Document]:
    if not isinstance(rows, list):
        raise ValueError("documents must be a list")
    return [
        Document(id=str(i), text=str(t), metadata={str(k): str(v) for k, v in m.items()}) for i, t, m in rows
    ]


def vectors_to_bytes(vectors: FloatMatrix) -> bytes:
    return np.ascontiguousarray(vectors, dtype=_FLOAT32_LE).tobytes()


def vectors_from_bytes(data: bytes | memoryview, rows: int, dimension: int) -> FloatMatrix:
    if len(data) != rows * dimension * 4:
        raise ValueError(f"expected {rows}x{dimension} float32 values, got {len(data)} bytes")
    return np.frombuffer(data, dtype=_FLOAT32_LE).astype(np.float32).reshape(rows, dimension)
