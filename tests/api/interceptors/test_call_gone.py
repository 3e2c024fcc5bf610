"""Client departure is recognised by grpc's private ExecuteBatchError (no public way exists: the
context's cancelled() and done() still say False when a write fails). If grpc renames or moves that
class, this test fails loudly instead of departures silently becoming INTERNAL."""

from __future__ import annotations

import asyncio

import grpc

from rag_grpc.api.interceptors.base import call_gone


async def test_a_write_after_the_client_left_is_recognised_as_the_call_being_gone() -> None:
    failed_writes: list[BaseException] = []

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                await context.write(b"x" * 1000)
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            try:
                await context.write(b"after the client left")
            except Exception as exc:  # noqa: BLE001 - what we are here to look at
                failed_writes.append(exc)
            raise

    server = grpc.aio.server()
    handlers = {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Gone", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/test.Gone/Stream")(b"")
            await call.read()
            call.cancel()
            async with asyncio.timeout(5):
                while not failed_writes:
                    await asyncio.sleep(0.01)
    finally:
        await server.stop(0)
    (exc,) = failed_writes
    assert call_gone(exc), f"grpc raised {type(exc).__module__}.{type(exc).__name__}; update call_gone()"
    assert not call_gone(RuntimeError("an ordinary failure"))
