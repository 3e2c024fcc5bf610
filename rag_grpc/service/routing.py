"""Model selection for `model: "auto"`: a cheap pre-generation router in the manner of RouteLLM.

The router scores how hard a request is from signals the service already has once retrieval ran, and
sends it to the big generator when the difficulty passes a threshold, else to the small one. The
threshold is calibrated offline on the quality set (bench/qa) to a target share of big-model calls;
`calibrated_threshold` is that step. Each component of the difficulty is in [0, 1] and names the
reason of the decision, which goes to the `rag_route_total{model,reason}` counter, the call's log line
and Final.route.

Why these signals: on the quality set the small model's mistakes come from near-tied sources (two
documents about near-identical names, one of which it copies), from weak sources (the question's subject
is not in the index and it invents an answer), and from open questions that need more than one fact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag_grpc.domain import Hit

# A best hit this much ahead of the second leaves no doubt which document answers.
CLEAR_MARGIN = 0.05
# Cosine scores of all-MiniLM-L6-v2 between a question and the document that answers it are mostly
# above STRONG_SCORE; below WEAK_SCORE the index most likely does not hold the answer.
STRONG_SCORE = 0.8
WEAK_SCORE = 0.5
# Questions asking for an explanation or a comparison rather than a fact.
_OPEN_FORM = re.compile(
    r"^\s*(why\b|how\b(?!\s+(many|much|old|long|far|tall|big|often)\b)|explain|describe|compare|summari[sz]e|"
    r"discuss|what are the (differences|reasons|advantages|pros))",
    re.IGNORECASE,
)
# Queries longer than this many words count as harder, reaching full difficulty LONG_QUERY_SPAN later.
LONG_QUERY_WORDS = 24
LONG_QUERY_SPAN = 24


@dataclass(frozen=True, slots=True)
class RouteSignals:
    top_score: float | None  # None without retrieval, or when it found nothing
    margin: float | None  # best minus second-best score; None with fewer than two hits
    words: int
    open_form: bool

    @classmethod
    def of(cls, query: str, hits: Sequence[Hit] | None) -> RouteSignals:
        scores = sorted((hit.score for hit in hits or ()), reverse=True)
        return cls(
            top_score=scores[0] if scores else None,
            margin=scores[0] - scores[1] if len(scores) > 1 else None,
            words=len(query.split()),
            open_form=_OPEN_FORM.match(query) is not None,
        )

    def difficulty(self) -> tuple[float, str]:
        """The difficulty in [0, 1] and the component that set it."""
        parts = {
            "open_question": 1.0
            if self.open_form
            else _clamp((self.words - LONG_QUERY_WORDS) / LONG_QUERY_SPAN),
            "ambiguous_sources": 0.0 if self.margin is None else _clamp(1.0 - self.margin / CLEAR_MARGIN),
            "weak_sources": 0.0
            if self.top_score is None
            else _clamp((STRONG_SCORE - self.top_score) / (STRONG_SCORE - WEAK_SCORE)),
        }
        reason = max(parts, key=lambda name: parts[name])
        return parts[reason], reason


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    reason: str  # "easy", or the component that made the request hard
    difficulty: float


class Router:
    def __init__(self, small: str, big: str, threshold: float) -> None:
        self.small, self.big, self.threshold = small, big, threshold

    def route(self, signals: RouteSignals) -> Route:
        difficulty, reason = signals.difficulty()
        if difficulty > self.threshold:
            return Route(self.big, reason, difficulty)
        return Route(self.small, "easy", difficulty)

    @property
    def fingerprint(self) -> str:
        """What a cached answer of a routed request depends on besides the request itself."""
        return f"auto:{self.small}:{self.big}:{self.threshold:.6f}"


def calibrated_threshold(difficulties: Sequence[float], big_share: float) -> float:
    """The threshold that sends `big_share` of these requests to the big model (RouteLLM's calibration:
    the (1 - share) quantile of the difficulty over a representative set)."""
    if not difficulties:
        raise ValueError("calibration needs at least one request")
    ranked = sorted(difficulties)
    index = min(len(ranked) - 1, max(0, math.ceil((1.0 - big_share) * len(ranked)) - 1))
    # Requests above the threshold go big; ties at the threshold stay small.
    return 1.0 if big_share <= 0 else (0.0 if big_share >= 1 else ranked[index])
