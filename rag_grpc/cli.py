"""`rag-grpc serve`, `rag-grpc ingest` and `rag-grpc snapshot`. Serve options are generated from the
fields of every settings group, under their flat names, so the CLI can only override settings, never
add meaning of its own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from rag_grpc.settings import Settings, setting_fields


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    for _, name, field in setting_fields():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = ((name, getattr(args, name, None)) for _, name, _ in setting_fields())
    return Settings(**{name: value for name, value in given if value is not None})


def _client_channel(target: str, tls_ca_file: Path | None) -> Any:
    import grpc

    if tls_ca_file is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(tls_ca_file.read_bytes()))


def _auth_metadata(api_key_file: Path | None) -> tuple[tuple[str, str], ...] | None:
    # The key is read from a file so that it never shows in the process list.
    return (("authorization", f"Bearer {api_key_file.read_text().strip()}"),) if api_key_file else None


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address")
    parser.add_argument(
        "--api-key-file", type=Path, help="file holding a read-write API key, when the server needs one"
    )
    parser.add_argument("--tls-ca-file", type=Path, help="PEM CA that signed the server's certificate (TLS)")


def _batched(documents: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(islice(documents, size)):
        yield batch


async def _ingest(
    target: str,
    paths: list[Path],
    batch_size: int,
    chunk_chars: int,
    api_key_file: Path | None = None,
    tls_ca_file: Path | None = None,
) -> int:
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

    metadata = _auth_metadata(api_key_file)
    async with _client_channel(target, tls_ca_file) as channel:
        stub = pb_grpc.DocumentServiceStub(channel)
        try:
            response = await stub.Ingest(requests(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            print(f"ingest failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    summary = f"ingested {response.documents} documents in {response.batches} batches; index version {response.index_version}"
    if bad_input:
        print(f"ingest stopped at bad input: {bad_input[0]} ({summary})", file=sys.stderr)
        return 1
    print(summary)
    return 0


async def _snapshot(target: str, api_key_file: Path | None = None, tls_ca_file: Path | None = None) -> int:
    import grpc

    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    async with _client_channel(target, tls_ca_file) as channel:
        try:
            response = await pb_grpc.AdminServiceStub(channel).Snapshot(
                pb.SnapshotRequest(), metadata=_auth_metadata(api_key_file)
            )
        except grpc.aio.AioRpcError as err:
            print(f"snapshot failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if not response.written:
        print(
            f"snapshot already current at index version {response.index_version} ({response.documents} documents)"
        )
    else:
        print(
            f"snapshot written: index version {response.index_version}, {response.documents} documents, "
            f"{response.bytes} bytes in {response.duration_ms:.0f} ms"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-grpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server (options override RAG_GRPC_* settings)")
    _add_settings_options(serve)
    ingest = commands.add_parser("ingest", help="send .txt/.md/.jsonl files to a running server")
    ingest.add_argument("paths", nargs="+", type=Path, help="files or directories")
    _add_client_options(ingest)
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per Ingest message")
    ingest.add_argument("--chunk-chars", type=int, default=1000, help="longest chunk cut from a text file")
    new_key = commands.add_parser(
        "new-api-key",
        help="make a random API key; prints it once, and its line for api_keys_file (hash only)",
    )
    new_key.add_argument("name", help="caller name shown in logs and metrics")
    new_key.add_argument("--role", choices=["read-only", "read-write"], default="read-only")
    snapshot = commands.add_parser(
        "snapshot", help="ask a running server (with a data_dir) to snapshot its index now"
    )
    _add_client_options(snapshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "new-api-key":
        from rag_grpc.api.api_keys import MAX_NAME_CHARS, is_caller_name, key_hash
        from rag_grpc.api.api_keys import new_key as make_key

        if not is_caller_name(args.name):
            parser.error(f"name needs 1..{MAX_NAME_CHARS} characters of A-Z a-z 0-9 - . _ @")
        key = make_key()
        print(f"key (give it to the caller; it is not stored): {key}")
        print(f"api_keys_file line: {args.name} {args.role} {key_hash(key).hex()}")
        return 0
    if args.command == "serve":
        from rag_grpc.logging import configure_logging

        settings = settings_from_args(args)
        # Before grpc and the model libraries are imported: some of their switches are read at import.
        configure_logging(settings.observability.log_level, settings.observability.log_json)
        from rag_grpc.app import serve as run_server

        asyncio.run(run_server(settings))
        return 0
    if args.command == "snapshot":
        return asyncio.run(_snapshot(args.target, args.api_key_file, args.tls_ca_file))
    return asyncio.run(
        _ingest(
            args.target, args.paths, args.batch_size, args.chunk_chars, args.api_key_file, args.tls_ca_file
        )
    )


if __name__ == "__main__":
    sys.exit(main())
