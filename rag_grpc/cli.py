"""`rag-grpc serve`, `new-api-key` and `snapshot`, and for people at a terminal `ask`, `search`, `ingest` and
`status` (rag_grpc/console, through the typed client). Serve options are generated from the fields of every
settings group, under their flat names, so the CLI can only override settings, never add meaning of its
own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rag_grpc.console import parsers
from rag_grpc.settings import Settings, setting_fields

# The commands for people: parsers.add_<name> defines one, rag_grpc.console.<name>.<name> runs it.
CLIENT_COMMANDS = ("ask", "search", "ingest", "status")


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


def _client_channel(args: argparse.Namespace) -> Any:
    import grpc

    from rag_grpc.console.common import tls_from_args
    from rag_grpc_client.config import credentials

    tls = tls_from_args(args)
    if tls is None:
        return grpc.aio.insecure_channel(args.target)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else None
    return grpc.aio.secure_channel(args.target, credentials(tls), options=options)


def _auth_metadata(api_key_file: Path | None) -> tuple[tuple[str, str], ...] | None:
    # The key is read from a file so that it never shows in the process list.
    return (("authorization", f"Bearer {api_key_file.read_text().strip()}"),) if api_key_file else None


async def _snapshot(args: argparse.Namespace) -> int:
    import grpc

    from rag_grpc.v1 import rag_pb2 as pb
    from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

    async with _client_channel(args) as channel:
        try:
            response = await pb_grpc.AdminServiceStub(channel).Snapshot(
                pb.SnapshotRequest(), metadata=_auth_metadata(args.api_key_file)
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
    for name in CLIENT_COMMANDS:
        getattr(parsers, f"add_{name}")(commands)
    new_key = commands.add_parser(
        "new-api-key",
        help="make a random API key; prints it once, and its line for api_keys_file (hash only)",
    )
    new_key.add_argument("name", help="caller name shown in logs and metrics")
    new_key.add_argument("--role", choices=["read-only", "read-write"], default="read-only")
    snapshot = commands.add_parser(
        "snapshot", help="ask a running server (with a data_dir) to snapshot its index now"
    )
    parsers.add_connection_options(snapshot)
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
        return asyncio.run(_snapshot(args))
    import importlib

    from rag_grpc.console.common import run

    command = importlib.import_module(f"rag_grpc.console.{args.command}")
    return run(getattr(command, args.command)(args))


if __name__ == "__main__":
    sys.exit(main())
