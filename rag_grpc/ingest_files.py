"""Reading documents from text, markdown and JSONL files, for `rag-grpc ingest` and the demo corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rag_grpc.domain import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Splits on blank lines, packing paragraphs into chunks of at most `max_chars` (a longer paragraph is cut)."""
    chunks: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        rest = paragraph
        while len(rest) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(rest[:max_chars])
            rest = rest[max_chars:]
        if current and len(current) + 2 + len(rest) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{rest}" if current else rest
    if current:
        chunks.append(current)
    return chunks


def documents_from_text_file(path: Path, max_chars: int = 1000) -> list[Document]:
    text = path.read_text(encoding="utf-8")
    chunks = chunk_text(text, max_chars)
    return [
        Document(id=f"{path.name}#{n}", text=chunk, metadata={"source": path.name, "chunk": str(n)})
        for n, chunk in enumerate(chunks)
    ]


def documents_from_jsonl(path: Path) -> Iterator[Document]:
    """Each line: {"id": str, "text": str, "metadata": {str: str}} (metadata optional)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                metadata = {str(k): str(v) for k, v in (record.get("metadata") or {}).items()}
                yield Document(id=str(record["id"]), text=str(record["text"]), metadata=metadata)
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a document record ({exc})") from exc


def documents_from_paths(paths: list[Path], max_chars: int = 1000) -> Iterator[Document]:
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".jsonl":
                yield from documents_from_jsonl(file)
            elif file.suffix in TEXT_SUFFIXES:
                yield from documents_from_text_file(file, max_chars)


def demo_corpus_dir() -> Path:
    return Path(__file__).parent / "demo_corpus"
