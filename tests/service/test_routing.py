"""The router's signals, decisions and calibration (rag_grpc/service/routing.py)."""

from __future__ import annotations

import pytest

from rag_grpc.domain import Hit
from rag_grpc.service.routing import Router, RouteSignals, calibrated_threshold


def hits(*scores: float) -> list[Hit]:
    return [Hit(str(n), score, "text", {}) for n, score in enumerate(scores)]


ROUTER = Router("small", "big", threshold=0.5)


def test_one_strong_source_is_easy() -> None:
    route = ROUTER.route(RouteSignals.of("What is the code of the Zephyr project?", hits(0.9)))
    assert (route.model, route.reason) == ("small", "easy")


def test_near_tied_sources_are_ambiguous() -> None:
    route = ROUTER.route(RouteSignals.of("What is the code of the Kestrel project?", hits(0.81, 0.80)))
    assert (route.model, route.reason) == ("big", "ambiguous_sources")


def test_weak_sources_go_big() -> None:
    route = ROUTER.route(RouteSignals.of("What is the code of the Kestrel project?", hits(0.45)))
    assert (route.model, route.reason) == ("big", "weak_sources")


def test_open_questions_go_big_also_without_retrieval() -> None:
    route = ROUTER.route(RouteSignals.of("Why do lighthouses use Fresnel lenses?", None))
    assert (route.model, route.reason) == ("big", "open_question")
    # "How many" asks for a fact.
    assert ROUTER.route(RouteSignals.of("How many nodes does Orion have?", None)).model == "small"


def test_the_threshold_moves_requests_between_models() -> None:
    signals = RouteSignals.of("What is the code of the Kestrel project?", hits(0.81, 0.79))
    difficulty, _ = signals.difficulty()
    assert Router("small", "big", threshold=difficulty).route(signals).model == "small"
    assert Router("small", "big", threshold=difficulty - 0.01).route(signals).model == "big"


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_calibration_sends_the_target_share_to_the_big_model(share: float) -> None:
    difficulties = [n / 100 for n in range(100)]
    threshold = calibrated_threshold(difficulties, share)
    big = sum(d > threshold for d in difficulties) / len(difficulties)
    assert big == pytest.approx(share, abs=0.011)
