"""The quality set and its scorer (bench/qa): the committed files are what make_set writes, every
answerable question is answered by its own document and only there, and the judge's rules."""

from __future__ import annotations

import re

from bench.qa import make_set
from bench.qa.score import Question, judge, load_corpus, load_questions, slice_of


def test_the_committed_set_is_what_make_set_writes() -> None:
    corpus, questions = make_set.build()
    assert [d["id"] for d in corpus] == [d["id"] for d in load_corpus()]
    assert [q["id"] for q in questions] == [q.id for q in load_questions()]


def test_each_answer_is_in_its_own_document_and_unanswerable_subjects_are_nowhere() -> None:
    texts = {d["id"]: d["text"] for d in load_corpus()}
    questions = load_questions()
    assert len(texts) >= 250 and len(questions) >= 150
    for q in questions:
        if q.answer is not None:
            assert q.source is not None and q.answer in texts[q.source], q
            assert all(d not in texts[q.source] for d in q.distractors), q
        else:
            subject = re.search(
                r"the (\w+) (project|compute|lighthouse|laboratory|festival|rowing)", q.question
            )
            assert subject is not None, q
            assert not any(re.search(rf"\b{subject.group(1)}\b", text) for text in texts.values()), q


QUESTION = Question("q", "What is the code of the Orion project?", "4335", ("3900",), "doc", "project_code")
ABSENT = Question("a", "What is the code of the Delta project?", None, ("3900", "4335"), None, "project_code")


def test_judge() -> None:
    assert judge(QUESTION, "The secret access code of the Orion project is 4335.")
    # Naming the sibling's value too is not an answer; a longer number is not the code.
    assert not judge(QUESTION, "It is 4335 or 3900.")
    assert not judge(QUESTION, "The code is 43350.")
    assert judge(ABSENT, "I don't know: the documents do not mention Delta.")
    assert not judge(ABSENT, "The code of the Delta project is 3900.")
    assert not judge(ABSENT, "The Delta project is a side effort of the platform team.")


def test_the_slice_has_both_kinds() -> None:
    picked = slice_of(load_questions(), 20, 10)
    assert sum(q.answerable for q in picked) == 20 and sum(not q.answerable for q in picked) == 10
    assert len({q.family for q in picked}) == len(make_set.FAMILIES)
