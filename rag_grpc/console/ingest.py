"""`rag-grpc ingest PATHS`: text, markdown and JSONL files into a running server, with progress, in Ingest
calls of --commit-every documents. Each acknowledged call is recorded (ingest_state.py), so running the
same command again after a failure or Ctrl-C sends only what the server has not acknowledged."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from itertools import accumulate, islice

from rag_grpc.console.common import connect
from rag_grpc.console.ingest_state import IngestState, default_path, fingerprint
from rag_grpc.console.progress import IngestProgressView
from rag_grpc.domain import Document
from rag_grpc.ingest_files import documents_from_paths
from rag_grpc_client import Document as ClientDocument
from rag_grpc_client import IngestProgress, RagClientError


def _todo(args: argparse.Namespace, state: IngestState) -> Iterator[tuple[Document, str]]:
    for doc in documents_from_paths(args.paths, args.chunk_chars):
        print_ = fingerprint(doc)
        if not state.has(doc.id, print_):
            yield doc, print_


async def ingest(args: argparse.Namespace) -> int:
    state_file = args.state_file or default_path(args.target, args.paths, args.chunk_chars)
    state = IngestState(state_file) if args.no_resume else IngestState.load(state_file)
    # A first pass reads every file: totals for the progress bar, and bad input stops the run before
    # anything is sent.
    try:
        sizes = [(len(doc.text.encode()), state.has(doc.id, p)) for doc, p in _all(args)]
    except (ValueError, OSError) as exc:
        print(f"ingest stopped at bad input: {exc} (nothing was sent)", file=sys.stderr)
        return 1
    async with connect(args) as client:
        version = 0
        if state.done:
            version = (await client.info()).index.version
            if version < state.index_version:
                print(
                    f"the server's index (version {version}) is older than the one earlier runs wrote to "
                    f"(version {state.index_version}): it lost documents; sending everything",
                    file=sys.stderr,
                )
                state.forget()
                sizes = [(size, False) for size, _ in sizes]
        skipped = sum(done for _, done in sizes)
        if skipped:
            print(f"resuming: {skipped} documents already acknowledged ({state_file})", file=sys.stderr)
        if skipped == len(sizes):
            print(f"nothing to send: all {skipped} documents were already acknowledged", file=sys.stderr)
            return 0
        view = IngestProgressView(len(sizes) - skipped, sum(size for size, done in sizes if not done))
        sent_docs = sent_bytes = batches = 0
        try:
            todo = _todo(args, state)
            while call := list(islice(todo, args.commit_every)):
                offsets = [0, *accumulate(len(doc.text.encode()) for doc, _ in call)]
                result = await client.ingest(
                    (ClientDocument(d.id, d.text, d.metadata) for d, _ in call),
                    batch_size=args.batch_size,
                    on_progress=_reporter(view, sent_docs, sent_bytes, offsets),
                )
                state.commit({doc.id: p for doc, p in call}, result.index_version)
                sent_docs, sent_bytes = sent_docs + len(call), sent_bytes + offsets[-1]
                batches, version = batches + result.batches, result.index_version
        except RagClientError as err:
            view.close(summary=False)
            print(f"ingest failed: {err.code.name}: {err.message}", file=sys.stderr)
            if sent_docs:
                print(
                    f"{sent_docs} documents were acknowledged and recorded: run the same command again "
                    "to send the rest",
                    file=sys.stderr,
                )
            return 1
        except ValueError as exc:  # a file changed between the two passes
            view.close(summary=False)
            print(f"ingest stopped at bad input: {exc} ({sent_docs} documents sent)", file=sys.stderr)
            return 1
        except BaseException:  # Ctrl-C: what was acknowledged is recorded; restore the terminal
            view.close(summary=False)
            raise
        view.close()
    resumed = f" ({skipped} already there were skipped)" if skipped else ""
    print(f"ingested {sent_docs} documents in {batches} batches; index version {version}{resumed}")
    return 0


def _reporter(
    view: IngestProgressView, docs: int, sent: int, offsets: list[int]
) -> Callable[[IngestProgress], None]:
    """Progress of one call, on top of the calls before it (`offsets`: bytes before each document)."""

    def report(progress: IngestProgress) -> None:
        view.update(docs + progress.documents, sent + offsets[progress.documents])

    return report


def _all(args: argparse.Namespace) -> Iterator[tuple[Document, str]]:
    for doc in documents_from_paths(args.paths, args.chunk_chars):
        yield doc, fingerprint(doc)
