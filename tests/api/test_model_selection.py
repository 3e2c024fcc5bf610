"""Several generators in one server: `model` chooses by name, "auto" lets the router choose, and the
grounding check answers by itself when no document mentions the question's subject."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import CollectorRegistry

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines
from rag_grpc.engines.factory import build_generator
from rag_grpc.metrics import ServiceMetrics
from rag_grpc.service import RagService
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import collect, doc, expect_status

# The default engine under a second name stands for the small model here; tests/engines covers the
# quantized engines themselves.
SMALL, BIG = "small", "big"


@dataclass
class Selecting:
    stubs: Stubs
    registry: CollectorRegistry
    tag: str

    def routed(self, model: str, reason: str) -> float:
        return self.registry.get_sample_value("rag_route_total", {"model": model, "reason": reason}) or 0.0

    async def ask(self, question: str, model: str, **retrieval: object) -> list[pb.GenerateResponse]:
        request = pb.GenerateRequest(
            prompt=question,
            model=model,
            sampling=pb.SamplingParams(max_tokens=16),
            retrieval=pb.RetrievalOptions(filter={"test": self.tag}, top_k=5),
        )
        return await collect(self.stubs.generate.Generate(request))


@pytest.fixture(scope="module")
async def selecting(engines: Engines, settings: Settings) -> AsyncIterator[Selecting]:
    routed = settings.with_overrides(route_small_model=SMALL, route_big_model=BIG, route_threshold=0.5)
    async with await build_generator(settings) as small:
        generators = {BIG: engines.default_generator, SMALL: small}
        registry = CollectorRegistry()
        service = RagService(
            Engines(engines.embedder, engines.vector_store, generators),
            routed,
            metrics=ServiceMetrics(registry),
        )
        server = RagServer(routed, service)
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs, tag = Stubs(channel), uuid.uuid4().hex
            await stubs.documents.Upsert(
                pb.UpsertRequest(
                    documents=[
                        doc(
                            f"{tag}-zephyr", "The secret access code of the Zephyr project is 7421.", test=tag
                        ),
                        doc(f"{tag}-kestrel", "The Kestrel cluster has 96 nodes.", test=tag),
                        doc(f"{tag}-kestrel2", "The Kestrel cluster has 128 nodes.", test=tag),
                    ]
                )
            )
            yield Selecting(stubs, registry, tag)
        await server.stop(0)


async def test_info_lists_every_generator(selecting: Selecting) -> None:
    info = await selecting.stubs.info.Info(pb.InfoRequest())
    assert len(info.generators) == 2


async def test_model_names_the_generator_and_final_says_which_answered(selecting: Selecting) -> None:
    for model in (SMALL, BIG):
        final = (await selecting.ask("What is the secret access code of the Zephyr project?", model))[
            -1
        ].final
        assert (final.model, final.route) == (model, "")
    # No model: the default (the first generator).
    final = (await selecting.ask("What is the secret access code of the Zephyr project?", ""))[-1].final
    assert final.model == BIG


async def test_an_unknown_model_is_not_found(selecting: Selecting) -> None:
    error = await expect_status(selecting.ask("hello?", "gpt-17"), grpc.StatusCode.NOT_FOUND)
    assert (error.details() or "").startswith("model:")


async def test_auto_sends_an_easy_request_to_the_small_model(selecting: Selecting) -> None:
    before = selecting.routed(SMALL, "easy")
    messages = await selecting.ask("What is the secret access code of the Zephyr project?", "auto")
    final = messages[-1].final
    assert (final.model, final.route) == (SMALL, "easy")
    assert final.usage.completion_tokens > 0
    assert selecting.routed(SMALL, "easy") == before + 1


async def test_auto_sends_a_hard_request_to_the_big_model(selecting: Selecting) -> None:
    before = selecting.routed(BIG, "open_question")
    final = (await selecting.ask("Why does the Zephyr project keep a secret access code?", "auto"))[-1].final
    assert (final.model, final.route) == (BIG, "open_question")
    assert selecting.routed(BIG, "open_question") == before + 1
    # Two sources that contradict each other and that retrieval scores alike: which to believe is a
    # question for the big model.
    final = (await selecting.ask("How many nodes does the Kestrel cluster have?", "auto"))[-1].final
    assert (final.model, final.route) == (BIG, "ambiguous_sources")


async def test_auto_without_a_policy_is_refused(stubs: Stubs) -> None:
    request = pb.GenerateRequest(prompt="hi", model="auto", sampling=pb.SamplingParams(max_tokens=4))
    error = await expect_status(
        collect(stubs.generate.Generate(request)), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "route_small_model" in (error.details() or "")


async def test_a_subject_no_document_mentions_is_declined_without_a_generator(selecting: Selecting) -> None:
    messages = await selecting.ask("What is the secret access code of the Delta project?", "auto")
    assert messages[0].HasField("sources") and messages[0].sources.hits
    text = "".join(m.delta.text for m in messages if m.HasField("delta"))
    assert "do not mention Delta" in text
    final = messages[-1].final
    assert (final.model, final.usage.completion_tokens, final.finish_reason) == ("", 0, pb.FINISH_REASON_STOP)


def test_routing_names_generators_that_run(engines: Engines, settings: Settings) -> None:
    routed = settings.with_overrides(route_small_model="nope", route_big_model=BIG)
    with pytest.raises(ValueError, match="no generator named 'nope'"):
        RagService(Engines(engines.embedder, engines.vector_store, {BIG: engines.default_generator}), routed)
