"""The command lines of `rag-grpc ask`, `search`, `ingest`, `status` (and the connection options that
`snapshot` shares). Only argparse here: `rag-grpc serve` builds the same parser before it may import grpc."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target", default="127.0.0.1:50051", help="server address, or a DNS name (dns:///host:port)"
    )
    group.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key, when the server needs one (kept off argv)",
    )
    group.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    group.add_argument("--tls-ca-file", type=Path, help="PEM CA that signed the server's certificate (TLS)")
    group.add_argument("--tls-cert-file", type=Path, help="PEM client certificate, for mutual TLS")
    group.add_argument("--tls-key-file", type=Path, help="PEM key of --tls-cert-file")
    group.add_argument("--tls-server-name", help="name to check the server's certificate against")


def add_ask(commands: Commands) -> None:
    ask = commands.add_parser(
        "ask", help="ask a question; the answer streams, grounded on retrieved documents"
    )
    ask.add_argument("question")
    ask.add_argument("--top-k", type=int, help="documents to ground on (default: the server's)")
    ask.add_argument("--no-retrieval", action="store_true", help="answer without retrieved documents")
    ask.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata every source must have")
    ask.add_argument("--min-score", type=float, help="drop sources scoring below this")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--model", default="", help="generator (default: the server's)")
    add_connection_options(ask)


def add_search(commands: Commands) -> None:
    search = commands.add_parser("search", help="find the documents nearest to a query")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, help="hits wanted (default: the server's)")
    search.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata every hit must have")
    search.add_argument("--min-score", type=float, help="drop hits scoring below this")
    search.add_argument("--json", action="store_true", help="one JSON object per hit instead of a table")
    add_connection_options(search)


def add_status(commands: Commands) -> None:
    status = commands.add_parser("status", help="health per service, Info and live figures of a server")
    status.add_argument(
        "--metrics-url",
        help="the server's Prometheus endpoint, for live figures (e.g. http://127.0.0.1:9464/metrics)",
    )
    add_connection_options(status)


def add_ingest(commands: Commands) -> None:
    ingest = commands.add_parser(
        "ingest", help="send .txt/.md/.jsonl files to a running server (progress; a rerun resumes)"
    )
    ingest.add_argument("paths", nargs="+", type=Path, help="files or directories")
    add_connection_options(ingest)
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per Ingest message")
    ingest.add_argument("--chunk-chars", type=int, default=1000, help="longest chunk cut from a text file")
    ingest.add_argument(
        "--commit-every", type=int, default=512, help="documents per Ingest call: what a rerun may send again"
    )
    ingest.add_argument(
        "--state-file",
        type=Path,
        help="record of acknowledged documents (default: one per target and paths, "
        "under $XDG_CACHE_HOME/rag-grpc/ingest)",
    )
    ingest.add_argument("--no-resume", action="store_true", help="send everything, forgetting earlier runs")
