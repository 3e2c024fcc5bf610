"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from rag_grpc.v1 import rag_pb2 as pb


async def expect_status(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, f"{caught.value.code()}: {caught.value.details()}"
    return caught.value


async def collect(call: grpc.aio.UnaryStreamCall) -> list[pb.GenerateResponse]:
    return [message async for message in call]


def doc(doc_id: str, text: str, **metadata: str) -> pb.Document:
    return pb.Document(id=doc_id, text=text, metadata=metadata)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)
