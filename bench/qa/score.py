"""Scores grounded answers on the quality set through the real API (the typed Python client).

An answerable question is *correct* when the normalized answer contains the normalized gold answer and
none of the question's distractors (the near-identical sibling's value): naming both is not an answer.
An unanswerable question is *declined* when the answer says the documents do not tell (ABSTENTION) and
names none of the values the corpus holds for that kind of question (an invented fact).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_grpc_client import Retrieval
from rag_grpc_client.aio import AsyncClient

HERE = Path(__file__).resolve().parent
# How small models say that the documents do not answer; the grounding instruction asks for the first.
ABSTENTION = re.compile(
    r"\b(i don'?t know|i do not know|not (?:mentioned|stated|provided|specified|given|found|included|listed|"
    r"available|known)|no (?:information|mention|data)|(?:does|do|did) not (?:say|mention|contain|state|"
    r"include|specify|provide)|cannot (?:find|answer|determine|tell)|can'?t (?:find|answer|determine|tell)|"
    r"unable to|unknown)\b"
)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str | None  # None: the corpus cannot answer it
    distractors: tuple[str, ...]
    source: str | None
    family: str

    @property
    def answerable(self) -> bool:
        return self.answer is not None


def load_corpus(path: Path = HERE / "corpus.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def load_questions(path: Path = HERE / "questions.jsonl") -> list[Question]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [
        Question(r["id"], r["question"], r["answer"], tuple(r["distractors"]), r["source"], r["family"])
        for r in rows
    ]


def slice_of(questions: Sequence[Question], answerable: int, unanswerable: int) -> list[Question]:
    """A fixed, spread-out subset: every n-th question of each kind, so each family is represented."""
    picked: list[Question] = []
    for wanted, kind in ((answerable, True), (unanswerable, False)):
        pool = [q for q in questions if q.answerable is kind]
        step = max(1, len(pool) // max(1, wanted))
        picked += pool[::step][:wanted]
    return picked


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


def _contains(answer: str, value: str) -> bool:
    # Whole words only: the code 742 is not in "7421".
    return re.search(rf"(?<![a-z0-9]){re.escape(normalize(value))}(?![a-z0-9])", answer) is not None


def judge(question: Question, answer: str) -> bool:
    """Correct for an answerable question; declined for an unanswerable one."""
    text = normalize(answer)
    invented = any(_contains(text, value) for value in question.distractors)
    if question.answer is not None:
        return _contains(text, question.answer) and not invented
    return ABSTENTION.search(text) is not None and not invented


@dataclass
class Outcome:
    question: Question
    answer: str
    ok: bool
    top1: str | None  # id of the first source
    seconds: float
    model: str = ""  # who answered (Final.model; empty when the service declined by itself)
    route: str = ""  # why the router chose it (model "auto")


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    def _share(self, answerable: bool) -> float:
        group = [o for o in self.outcomes if o.question.answerable is answerable]
        return sum(o.ok for o in group) / len(group) if group else float("nan")

    @property
    def answerable_accuracy(self) -> float:
        return self._share(True)

    @property
    def unanswerable_declined(self) -> float:
        return self._share(False)

    @property
    def accuracy(self) -> float:
        """All questions: right answers plus right refusals."""
        return sum(o.ok for o in self.outcomes) / len(self.outcomes)

    @property
    def retrieval_top1(self) -> float:
        """Answerable questions whose own document came first."""
        group = [o for o in self.outcomes if o.question.answerable]
        return sum(o.top1 == o.question.source for o in group) / len(group) if group else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "questions": len(self.outcomes),
            "accuracy": self.accuracy,
            "answerable_correct": self.answerable_accuracy,
            "unanswerable_declined": self.unanswerable_declined,
            "retrieval_top1": self.retrieval_top1,
        }

    def failures(self) -> list[str]:
        return [
            f"{o.question.id}: {o.question.question!r} -> {o.answer!r} (gold {o.question.answer!r}, top1 {o.top1})"
            for o in self.outcomes
            if not o.ok
        ]


async def ingest_corpus(
    client: AsyncClient, corpus: Sequence[dict[str, Any]] | None = None, tag: str | None = None
) -> None:
    """Stores the corpus; with `tag`, as metadata {"qa": tag} and ids prefixed with it, so the set can
    share an index with other documents (asked with the same `tag`, retrieval sees only the set)."""
    prefix = f"{tag}-" if tag else ""
    metadata = {"qa": tag} if tag else {}
    documents = [
        {"id": prefix + d["id"], "text": d["text"], "metadata": metadata} for d in corpus or load_corpus()
    ]
    await client.ingest(documents)


async def ask(
    client: AsyncClient,
    question: Question,
    *,
    model: str = "",
    top_k: int = 5,
    max_tokens: int = 32,
    tag: str | None = None,
) -> Outcome:
    started = time.perf_counter()
    retrieval = Retrieval(top_k=top_k, filter={"qa": tag} if tag else {})
    answer = await client.answer(
        question.question, retrieval=retrieval, model=model, max_tokens=max_tokens, temperature=0.0
    )
    top1 = answer.sources[0].id.removeprefix(f"{tag}-") if answer.sources and tag else None
    if answer.sources and not tag:
        top1 = answer.sources[0].id
    ok = judge(question, answer.text)
    final = answer.final
    return Outcome(question, answer.text, ok, top1, time.perf_counter() - started, final.model, final.route)


async def run(
    client: AsyncClient,
    questions: Sequence[Question],
    *,
    model: str = "",
    top_k: int = 5,
    max_tokens: int = 32,
    concurrency: int = 4,
    tag: str | None = None,
) -> Report:
    """Asks every question (greedy, grounded on `top_k` sources) with `concurrency` calls in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(question: Question) -> Outcome:
        async with gate:
            return await ask(client, question, model=model, top_k=top_k, max_tokens=max_tokens, tag=tag)

    return Report(list(await asyncio.gather(*(one(q) for q in questions))))
