"""Which retrieved documents a grounded prompt uses, and when the service declines by itself."""

from __future__ import annotations

from rag_grpc.domain import Hit
from rag_grpc.service.grounding import abstention, select_sources, subject_terms


def hit(doc_id: str, score: float, text: str) -> Hit:
    return Hit(doc_id, score, text, {})


def test_subject_terms_are_names_codes_and_numbers() -> None:
    assert subject_terms("What is the secret access code of the Zephyr project?") == ("Zephyr",)
    assert subject_terms("Who is Zephyr's director in Oslo?") == ("Zephyr", "Oslo")
    assert subject_terms("Is port 50051 the default?") == ("50051",)
    # The first word is capitalised by grammar, not because it is a name.
    assert subject_terms("Which lighthouse is the tallest?") == ()


def test_the_document_about_the_named_subject_wins_over_a_near_name_with_a_higher_score() -> None:
    hits = [
        hit("orionis", 0.70, "The Orionis compute cluster has 208 nodes."),
        hit("orion", 0.69, "The Orion compute cluster has 456 nodes."),
        hit("other", 0.50, "The Kestrel cluster has 16 nodes."),
    ]
    grounding = select_sources(
        "How many nodes does the Orion compute cluster have?", hits, relative_floor=0.1, max_sources=3
    )
    assert [h.id for h in grounding.hits] == ["orion"]
    assert grounding.answerable


def test_a_subject_no_document_mentions_is_declined_naming_it() -> None:
    hits = [hit("zephyr", 0.66, "The secret access code of the Zephyr project is 7421.")]
    grounding = select_sources(
        "What is the secret access code of the Delta project?", hits, relative_floor=0.1, max_sources=3
    )
    assert not grounding.answerable
    assert grounding.missing == ("Delta",)
    assert "do not mention Delta" in abstention(grounding)


def test_without_subject_terms_the_floor_relative_to_the_best_hit_and_the_cap_apply() -> None:
    hits = [hit(str(n), score, f"text {n}") for n, score in enumerate([0.9, 0.85, 0.82, 0.81, 0.5])]
    kept = select_sources("which lighthouse is the tallest?", hits, relative_floor=0.1, max_sources=3).hits
    assert [h.id for h in kept] == ["0", "1", "2"]
    kept = select_sources("which lighthouse is the tallest?", hits, relative_floor=0.05, max_sources=9).hits
    assert [h.id for h in kept] == ["0", "1"]


def test_no_hits_is_nothing_to_ground_on() -> None:
    assert not select_sources("What is up?", [], relative_floor=0.1, max_sources=3).answerable
