from __future__ import annotations

import grpc
import numpy as np

from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import doc, expect_status


async def _upsert(stubs: Stubs, *documents: pb.Document) -> pb.UpsertResponse:
    return await stubs.documents.Upsert(pb.UpsertRequest(documents=list(documents)))


async def test_retrieve_by_text_finds_the_relevant_document(stubs: Stubs, isolated_tag: str) -> None:
    await _upsert(
        stubs,
        doc(
            f"{isolated_tag}-otters",
            "Sea otters hold hands while they sleep so they do not drift apart.",
            test=isolated_tag,
        ),
        doc(
            f"{isolated_tag}-tax", "Quarterly tax filings are due at the end of the month.", test=isolated_tag
        ),
    )
    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="how do otters sleep?", top_k=2, filter={"test": isolated_tag})
    )
    assert [h.id for h in response.hits] == [f"{isolated_tag}-otters", f"{isolated_tag}-tax"]
    assert response.hits[0].score > response.hits[1].score
    assert response.hits[0].metadata["test"] == isolated_tag
    assert "otters" in response.hits[0].text


async def test_retrieve_by_vector_and_min_score(stubs: Stubs, isolated_tag: str) -> None:
    await _upsert(stubs, doc(f"{isolated_tag}-a", "Granite is an igneous rock.", test=isolated_tag))
    embedded = await stubs.embed.Embed(pb.EmbedRequest(texts=["Granite is an igneous rock."]))
    vector = list(embedded.embeddings[0].values)

    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(
            vector=pb.Vector(values=[2 * v for v in vector]), top_k=1, filter={"test": isolated_tag}
        )
    )
    assert response.hits[0].id == f"{isolated_tag}-a"
    assert abs(response.hits[0].score - 1.0) < 1e-4  # the query is normalized by the server

    opposite = pb.Vector(values=[-v for v in vector])
    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(vector=opposite, top_k=5, filter={"test": isolated_tag}, min_score=0.0)
    )
    assert list(response.hits) == []


async def test_filter_requires_every_pair(stubs: Stubs, isolated_tag: str) -> None:
    await _upsert(
        stubs,
        doc(f"{isolated_tag}-en", "Bread recipe with flour and yeast.", test=isolated_tag, lang="en"),
        doc(f"{isolated_tag}-de", "Brotrezept mit Mehl und Hefe.", test=isolated_tag, lang="de"),
    )
    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="bread", top_k=10, filter={"test": isolated_tag, "lang": "de"})
    )
    assert [h.id for h in response.hits] == [f"{isolated_tag}-de"]
    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="bread", top_k=10, filter={"test": isolated_tag, "lang": "fr"})
    )
    assert list(response.hits) == []


async def test_upsert_replaces_and_every_write_bumps_the_version(stubs: Stubs, isolated_tag: str) -> None:
    first = await _upsert(stubs, doc(f"{isolated_tag}-x", "The old text about volcanoes.", test=isolated_tag))
    second = await _upsert(stubs, doc(f"{isolated_tag}-x", "The new text about glaciers.", test=isolated_tag))
    assert second.index_version > first.index_version

    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="glaciers", top_k=5, filter={"test": isolated_tag})
    )
    assert [h.text for h in response.hits] == ["The new text about glaciers."]
    assert response.index_version == second.index_version


async def test_delete_removes_documents(stubs: Stubs, isolated_tag: str) -> None:
    await _upsert(
        stubs,
        doc(f"{isolated_tag}-1", "First note.", test=isolated_tag),
        doc(f"{isolated_tag}-2", "Second note.", test=isolated_tag),
    )
    info_before = await stubs.info.Info(pb.InfoRequest())
    deleted = await stubs.documents.Delete(pb.DeleteRequest(ids=[f"{isolated_tag}-1"]))
    assert deleted.deleted == 1
    info_after = await stubs.info.Info(pb.InfoRequest())
    assert info_after.index.size == info_before.index.size - 1
    response = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="note", top_k=5, filter={"test": isolated_tag})
    )
    assert [h.id for h in response.hits] == [f"{isolated_tag}-2"]


async def test_delete_with_an_unknown_id_changes_nothing(stubs: Stubs, isolated_tag: str) -> None:
    await _upsert(stubs, doc(f"{isolated_tag}-keep", "Keep me.", test=isolated_tag))
    before = await stubs.info.Info(pb.InfoRequest())
    error = await expect_status(
        stubs.documents.Delete(pb.DeleteRequest(ids=[f"{isolated_tag}-keep", f"{isolated_tag}-missing"])),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "missing" in (error.details() or "")
    after = await stubs.info.Info(pb.InfoRequest())
    assert (after.index.size, after.index.version) == (before.index.size, before.index.version)


async def test_ingest_streams_batches(stubs: Stubs, isolated_tag: str) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        for batch in range(3):
            yield pb.IngestRequest(
                documents=[
                    doc(f"{isolated_tag}-{batch}-{i}", f"Batch {batch} item {i}.", test=isolated_tag)
                    for i in range(4)
                ]
            )

    response = await stubs.documents.Ingest(requests())
    assert (response.documents, response.batches) == (12, 3)
    hits = await stubs.retrieve.Retrieve(
        pb.RetrieveRequest(text="item", top_k=20, filter={"test": isolated_tag})
    )
    assert len(hits.hits) == 12


async def test_info_describes_models_index_and_limits(stubs: Stubs, settings: Settings) -> None:
    info = await stubs.info.Info(pb.InfoRequest())
    assert info.embedder.model == "all-MiniLM-L6-v2"
    assert info.embedder.dimension == info.index.dimension == 384
    assert info.embedder.max_input_tokens == 256
    assert [g.model for g in info.generators] == ["SmolLM2-135M-Instruct"]
    assert info.generators[0].backend == "transformers"
    assert info.index.backend == "faiss" and info.index.device == "cpu"
    assert info.limits.max_top_k == 100
    # Every reported limit is the setting of the same name.
    reported = {field.name: value for field, value in info.limits.ListFields()}
    assert reported == {name: getattr(settings.limits, name) for name in pb.Limits.DESCRIPTOR.fields_by_name}
    assert np.isfinite(info.index.version)
