"""Typed errors from a real server carry the status code, the field it named and its request id; the
parsing also works from the message alone (servers that send no BadRequest detail)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rag_grpc_client import AsyncClient, Client, InvalidArgument, NotFound, RagClientError
from rag_grpc_client.errors import error_from_status


async def test_invalid_argument_names_the_field(target: str) -> None:
    async with AsyncClient(target) as client:
        with pytest.raises(InvalidArgument) as bad:
            await client.embed(["fine", " "])
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field == "texts[1]"
        assert "non-empty" in bad.value.message

        with pytest.raises(InvalidArgument) as bad:
            await client.answer("hi", max_tokens=0)
        assert bad.value.field == "sampling.max_tokens"

        with pytest.raises(NotFound) as missing:
            await client.delete(["no-such-document-id"])
        assert missing.value.field == "ids"


async def test_sync_client_raises_the_same_errors(target: str) -> None:
    def call() -> None:
        with Client(target) as client:
            client.retrieve("x", top_k=0)

    # In a thread: the server runs on this thread's event loop.
    with pytest.raises(InvalidArgument) as bad:
        await asyncio.to_thread(call)
    assert bad.value.field == "top_k"


def test_field_and_delay_from_message_and_trailer_alone() -> None:
    error = error_from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "documents[3].metadata['a: b']: key or value is over 256 characters",
        (),
    )
    assert isinstance(error, InvalidArgument) and error.field == "documents[3].metadata['a: b']"
    error = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after", "2"),))
    assert error.retry_after_s == 2.0 and error.field is None
    error = error_from_status(grpc.StatusCode.INTERNAL, "internal error; see server logs", None)
    assert type(error) is RagClientError and error.code == grpc.StatusCode.INTERNAL
