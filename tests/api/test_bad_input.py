"""Every malformed request gets INVALID_ARGUMENT (or NOT_FOUND) naming the field, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from rag_grpc.settings import LimitSettings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import collect, doc, expect_status

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LONG = "x" * (LimitSettings.model_fields["max_text_chars"].default + 1)


def _gen(**sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(**sampling))


CASES: list[tuple[str, Callable[[Stubs], object], str]] = [
    ("embed: empty list", lambda s: s.embed.Embed(pb.EmbedRequest(texts=[])), "texts"),
    ("embed: empty string", lambda s: s.embed.Embed(pb.EmbedRequest(texts=["ok", ""])), "texts[1]"),
    ("embed: whitespace string", lambda s: s.embed.Embed(pb.EmbedRequest(texts=["  \n"])), "texts[0]"),
    ("embed: text over limit", lambda s: s.embed.Embed(pb.EmbedRequest(texts=[LONG])), "texts[0]"),
    ("embed: too many texts", lambda s: s.embed.Embed(pb.EmbedRequest(texts=["a"] * 257)), "texts"),
    ("retrieve: no query", lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(top_k=3)), "query"),
    ("retrieve: empty text", lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="")), "text"),
    ("retrieve: top_k zero", lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", top_k=0)), "top_k"),
    (
        "retrieve: top_k negative",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", top_k=-4)),
        "top_k",
    ),
    (
        "retrieve: top_k over cap",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", top_k=101)),
        "top_k",
    ),
    (
        "retrieve: wrong dimension",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(vector=pb.Vector(values=[1.0, 2.0]))),
        "vector.values",
    ),
    (
        "retrieve: zero vector",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(vector=pb.Vector(values=[0.0] * 384))),
        "vector.values",
    ),
    (
        "retrieve: nan vector",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(vector=pb.Vector(values=[float("nan")] * 384))),
        "vector.values",
    ),
    (
        "retrieve: filter empty key",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", filter={"": "x"})),
        "filter",
    ),
    (
        "retrieve: filter too many pairs",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", filter={f"k{i}": "v" for i in range(33)})),
        "filter",
    ),
    (
        "retrieve: min_score out of range",
        lambda s: s.retrieve.Retrieve(pb.RetrieveRequest(text="a", min_score=3.0)),
        "min_score",
    ),
    ("generate: no prompt", lambda s: collect(s.generate.Generate(pb.GenerateRequest())), "prompt"),
    (
        "generate: prompt and messages",
        lambda s: collect(
            s.generate.Generate(
                pb.GenerateRequest(prompt="a", messages=[pb.ChatMessage(role="user", content="b")])
            )
        ),
        "prompt",
    ),
    (
        "generate: bad role",
        lambda s: collect(
            s.generate.Generate(pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="b")]))
        ),
        "messages[0].role",
    ),
    (
        "generate: empty message",
        lambda s: collect(
            s.generate.Generate(pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="")]))
        ),
        "messages[0].content",
    ),
    (
        "generate: max_tokens zero",
        lambda s: collect(s.generate.Generate(_gen(max_tokens=0))),
        "sampling.max_tokens",
    ),
    (
        "generate: max_tokens negative",
        lambda s: collect(s.generate.Generate(_gen(max_tokens=-1))),
        "sampling.max_tokens",
    ),
    (
        "generate: max_tokens over cap",
        lambda s: collect(s.generate.Generate(_gen(max_tokens=100_000))),
        "sampling.max_tokens",
    ),
    (
        "generate: temperature negative",
        lambda s: collect(s.generate.Generate(_gen(temperature=-0.5))),
        "sampling.temperature",
    ),
    ("generate: top_p zero", lambda s: collect(s.generate.Generate(_gen(top_p=0.0))), "sampling.top_p"),
    ("generate: top_k negative", lambda s: collect(s.generate.Generate(_gen(top_k=-1))), "sampling.top_k"),
    ("generate: empty stop", lambda s: collect(s.generate.Generate(_gen(stop=[""]))), "sampling.stop[0]"),
    # Within max_prompt_chars, but a byte-level tokenizer spends several tokens on each such character.
    (
        "generate: prompt over the model's context",
        lambda s: collect(
            s.generate.Generate(
                pb.GenerateRequest(prompt="𝄞" * 30000, sampling=pb.SamplingParams(max_tokens=1))
            )
        ),
        "prompt",
    ),
    (
        "generate: retrieval top_k zero",
        lambda s: collect(
            s.generate.Generate(pb.GenerateRequest(prompt="a", retrieval=pb.RetrievalOptions(top_k=0)))
        ),
        "retrieval.top_k",
    ),
    (
        "generate: retrieval bad filter",
        lambda s: collect(
            s.generate.Generate(
                pb.GenerateRequest(prompt="a", retrieval=pb.RetrievalOptions(filter={" ": "x"}))
            )
        ),
        "retrieval.filter",
    ),
    ("upsert: no documents", lambda s: s.documents.Upsert(pb.UpsertRequest()), "documents"),
    (
        "upsert: empty id",
        lambda s: s.documents.Upsert(pb.UpsertRequest(documents=[doc("ok-1", "a"), doc("", "b")])),
        "documents[1].id",
    ),
    (
        "upsert: empty text",
        lambda s: s.documents.Upsert(pb.UpsertRequest(documents=[doc("ok-2", "")])),
        "documents[0].text",
    ),
    (
        "upsert: text over limit",
        lambda s: s.documents.Upsert(pb.UpsertRequest(documents=[doc("ok-3", LONG)])),
        "documents[0].text",
    ),
    (
        "upsert: duplicate id",
        lambda s: s.documents.Upsert(pb.UpsertRequest(documents=[doc("dup", "a"), doc("dup", "b")])),
        "documents[1].id",
    ),
    (
        "upsert: bad metadata key",
        lambda s: s.documents.Upsert(pb.UpsertRequest(documents=[doc("ok-4", "a", **{"": "v"})])),
        "documents[0].metadata",
    ),
    ("delete: no ids", lambda s: s.documents.Delete(pb.DeleteRequest()), "ids"),
    ("delete: empty id", lambda s: s.documents.Delete(pb.DeleteRequest(ids=[""])), "ids[0]"),
]


@pytest.mark.parametrize(("case", "call", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_rejected_naming_the_field(
    stubs: Stubs, case: str, call: Callable[[Stubs], object], field: str
) -> None:
    before = await stubs.info.Info(pb.InfoRequest())
    error = await expect_status(call(stubs), INVALID)  # type: ignore[arg-type]
    assert (error.details() or "").startswith(f"{field}:"), error.details()
    after = await stubs.info.Info(pb.InfoRequest())
    assert (after.index.size, after.index.version) == (before.index.size, before.index.version)


async def test_unknown_ids_are_not_found(stubs: Stubs) -> None:
    error = await expect_status(
        stubs.documents.Delete(pb.DeleteRequest(ids=["never-stored"])), grpc.StatusCode.NOT_FOUND
    )
    assert "ids" in (error.details() or "")


async def test_unknown_model_is_not_found(stubs: Stubs) -> None:
    error = await expect_status(
        collect(stubs.generate.Generate(pb.GenerateRequest(prompt="a", model="gpt-17"))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (error.details() or "").startswith("model:")


async def test_a_bad_ingest_batch_keeps_earlier_batches_and_names_the_message(
    stubs: Stubs, isolated_tag: str
) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield pb.IngestRequest(
            documents=[doc(f"{isolated_tag}-good", "Stored before the bad batch.", test=isolated_tag)]
        )
        yield pb.IngestRequest(documents=[doc(f"{isolated_tag}-bad", "", test=isolated_tag)])

    error = await expect_status(stubs.documents.Ingest(requests()), INVALID)
    assert (error.details() or "").startswith("requests[1].documents[0].text:")
    hits = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="stored", top_k=5, filter={"test": isolated_tag})
    )
    assert [h.id for h in hits.hits] == [f"{isolated_tag}-good"]


async def test_a_prompt_beyond_the_model_context_is_rejected(stubs: Stubs) -> None:
    prompt = "lorem ipsum dolor sit amet " * 1000  # about 6,000 tokens; 8,192 is SmolLM2's context
    error = await expect_status(
        collect(
            stubs.generate.Generate(
                pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=2048))
            )
        ),
        INVALID,
    )
    assert (error.details() or "").startswith("prompt:") and "context" in (error.details() or "")
