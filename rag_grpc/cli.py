"""`rag-grpc serve`, `rag-grpc ingest` and `rag-grpc snapshot`. Serve options are generated from
Settings, so the CLI can only override settings, never add meaning of its own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from rag_grpc.settings import Settings


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _batched(documents: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(islice(documents, size)):
        yield batch


async def _ingest(target: str, paths: list[Path], batch_size: int, chunk_chars: int) -> int:
    import grpc

    from rag_grpc.ingest_files import documents_from_paths
    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    bad_input: list[ValueError] = []

    def requests() -> Iterator[pb.IngestRequest]:
        # An exception escaping a request iterator only cancels the call; remember it and end the stream.
        try:
            for batch in _batched(documents_from_paths(paths, chunk_chars), batch_size):
                yield pb.IngestRequest(
                    documents=[pb.Document(id=d.id, text=d.text, metadata=dict(d.metadata)) for d in batch]
                )
        except ValueError as exc:
            bad_input.append(exc)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DocumentServiceStub(channel)
        try:
            response = await stub.Ingest(requests())
        except grpc.aio.AioRpcError as err:
            print(f"ingest failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    summary = f"ingested {response.documents} documents in {response.batches} batches; index version {response.index_version}"
    if bad_input:
        print(f"ingest stopped at bad input: {bad_input[0]} ({summary})", file=sys.stderr)
        return 1
    print(summary)
    return 0


async def _snapshot(target: str) -> int:
    import grpc

    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await pb_grpc.AdminServiceStub(channel).Snapshot(pb.SnapshotRequest())
        except grpc.aio.AioRpcError as err:
            print(f"snapshot failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if not response.written:
        print(f"snapshot already current at index version {response.index_version} ({response.documents} documents)")
    else:
        print(
            f"snapshot written: index version {response.index_version}, {response.documents} documents, "
            f"{response.bytes} bytes in {response.duration_ms:.0f} ms"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rag-grpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server (options override RAG_GRPC_* settings)")
    _add_settings_options(serve)
    ingest = commands.add_parser("ingest", help="send .txt/.md/.jsonl files to a running server")
    ingest.add_argument("paths", nargs="+", type=Path, help="files or directories")
    ingest.add_argument("--target", default="127.0.0.1:50051", help="server address")
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per Ingest message")
    ingest.add_argument("--chunk-chars", type=int, default=1000, help="longest chunk cut from a text file")
    snapshot = commands.add_parser("snapshot", help="ask a running server (with a data_dir) to snapshot its index now")
    snapshot.add_argument("--target", default="127.0.0.1:50051", help="server address")
    args = parser.parse_args(argv)

    if args.command == "serve":
        from rag_grpc.app import serve as run_server
        from rag_grpc.logging import configure_logging

        settings = settings_from_args(args)
        configure_logging(settings.log_level, settings.log_json)
        asyncio.run(run_server(settings))
        return 0
    if args.command == "snapshot":
        return asyncio.run(_snapshot(args.target))
    return asyncio.run(_ingest(args.target, args.paths, args.batch_size, args.chunk_chars))


if __name__ == "__main__":
    sys.exit(main())
