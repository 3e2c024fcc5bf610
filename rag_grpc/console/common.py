"""The client that the connection options (parsers.py) make, and how a failed call is shown."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from rag_grpc_client import TLS, AsyncClient, RagClientError


def tls_from_args(args: argparse.Namespace) -> TLS | None:
    given = (args.tls_ca_file, args.tls_cert_file, args.tls_key_file, args.tls_server_name)
    if not args.tls and all(value is None for value in given):
        return None
    return TLS.from_files(*given)


def api_key_from_args(args: argparse.Namespace) -> str | None:
    return args.api_key_file.read_text().strip() if args.api_key_file else None


def connect(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(args.target, api_key=api_key_from_args(args), tls=tls_from_args(args))


def parse_filter(pairs: list[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--filter takes key=value, got {pair!r}")
        result[key] = value
    return result


def run(command: Coroutine[Any, Any, int]) -> int:
    """Runs a command; a failed call is one line on stderr and exit status 1, Ctrl-C is 130."""
    try:
        return asyncio.run(command)
    except RagClientError as err:
        where = f" (field {err.field})" if err.field else ""
        print(f"error: {err.code.name}: {err.message}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
