"""Which retrieved documents a grounded answer may use, and when there is nothing to ground it on.

Measured on the quality set (bench/qa, SmolLM2-135M): given the five best hits, the model copies a fact
from the wrong one of two documents about near-identical names (Orion / Orionis) a third of the time,
and it never declines a question whose subject the index does not hold, whatever the instruction says:
it answers with a fact of a neighbouring document. Retrieval by embedding cannot tell those names apart
(their scores tie), but the words can. So the question's subject terms (its names, codes and numbers)
decide:

- documents that mention the most of them are kept, the others dropped, best hit first;
- when the question has subject terms and no retrieved document mentions any of them, the index does
  not hold the answer: the service says so itself instead of asking the model (`Grounding.missing`);
- a question without subject terms keeps the documents within `relative_floor` of the best score.

At most `max_sources` documents are kept: the fewer the model reads, the less it can confuse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rag_grpc.domain import Hit

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-'][A-Za-z0-9]+)*|\d[\w-]*")
# Capitalised words that are not names.
_NOT_NAMES = frozenset(
    [
        "i",
        "a",
        "an",
        "the",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "in",
        "on",
        "of",
        "for",
        "to",
        "and",
        "or",
    ]
)


def subject_terms(question: str) -> tuple[str, ...]:
    """Names (capitalised words after the first), codes and numbers of a question, in order."""
    terms: list[str] = []
    for n, match in enumerate(_WORD.finditer(question)):
        word = match.group().removesuffix("'s")
        is_name = n > 0 and word[0].isupper() and word.lower() not in _NOT_NAMES
        if (is_name or any(c.isdigit() for c in word)) and word not in terms:
            terms.append(word)
    return tuple(terms)


@lru_cache(maxsize=1024)
def _term_pattern(term: str) -> re.Pattern[str]:
    # Whole words: "Orion" is not in "Orionis".
    return re.compile(rf"(?<![\w-]){re.escape(term)}(?![\w-])", re.IGNORECASE)


def _mentions(hit: Hit, terms: Sequence[str]) -> int:
    return sum(_term_pattern(term).search(hit.text) is not None for term in terms)


@dataclass(frozen=True, slots=True)
class Grounding:
    hits: list[Hit]  # what the prompt is built from, best first
    missing: tuple[str, ...] = ()  # subject terms no retrieved document mentions (when none is kept)

    @property
    def answerable(self) -> bool:
        return bool(self.hits)


def select_sources(
    question: str, hits: Sequence[Hit], *, relative_floor: float, max_sources: int
) -> Grounding:
    """The documents to ground an answer to `question` on (see the module's docstring)."""
    if not hits:
        return Grounding([], subject_terms(question))
    terms = subject_terms(question)
    if terms:
        counts = [_mentions(hit, terms) for hit in hits]
        best = max(counts)
        if best == 0:
            return Grounding([], terms)
        kept = [hit for hit, count in zip(hits, counts, strict=True) if count == best]
    else:
        top = max(hit.score for hit in hits)
        kept = [hit for hit in hits if hit.score >= top - relative_floor]
    return Grounding(sorted(kept, key=lambda hit: -hit.score)[:max_sources])


def abstention(grounding: Grounding) -> str:
    """What the service answers when the documents cannot ground an answer."""
    if grounding.missing:
        return f"I don't know: the documents do not mention {', '.join(grounding.missing)}."
    return "I don't know: no documents were found for this question."
