"""What earlier runs of `rag-grpc ingest` got acknowledged, so a rerun sends only the rest.

One JSON line is appended (and fsynced) after each Ingest call the server acknowledged: the ids and
content fingerprints of its documents and the index version the call produced. A document counts as
already there when its id and fingerprint are recorded: a changed text or metadata is sent again. The
server has no call that lists what it stores, so the record is checked against it the one way it can be:
an index version below the recorded one means the server lost data (say, a restart without data_dir),
and then the record is ignored and everything is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rag_grpc.domain import Document


def fingerprint(doc: Document) -> str:
    content = json.dumps([doc.text, sorted(doc.metadata.items())], ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:24]


def default_path(target: str, paths: list[Path], chunk_chars: int) -> Path:
    """One record per target and set of inputs, in the user's cache directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = json.dumps([target, sorted(str(p.resolve()) for p in paths), chunk_chars])
    return cache / "rag-grpc" / "ingest" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.jsonl"


class IngestState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, str] = {}
        self.index_version = 0

    @classmethod
    def load(cls, path: Path) -> IngestState:
        state = cls(path)
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    done, version = dict(record["done"]), int(record["index_version"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: its call is sent again
                state.done.update(done)
                state.index_version = max(state.index_version, version)
        return state

    def forget(self) -> None:
        self.done.clear()
        self.index_version = 0
        self.path.unlink(missing_ok=True)

    def has(self, doc_id: str, print_: str) -> bool:
        return self.done.get(doc_id) == print_

    def commit(self, done: dict[str, str], index_version: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps({"index_version": index_version, "done": done}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.done.update(done)
        self.index_version = max(self.index_version, index_version)
