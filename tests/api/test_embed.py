from __future__ import annotations

import numpy as np
from sentence_transformers import SentenceTransformer

from rag_grpc.engines.model_files import BUNDLED_EMBEDDER, resolve_embedder
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs


async def test_embed_returns_unit_vectors_matching_the_model(stubs: Stubs) -> None:
    texts = ["The Pharos of Alexandria was a lighthouse.", "Espresso is brewed under pressure."]
    response = await stubs.embed.Embed(pb.EmbedRequest(texts=texts))

    assert response.model == "all-MiniLM-L6-v2"
    assert response.dimension == 384
    assert len(response.embeddings) == 2
    vectors = np.array([e.values for e in response.embeddings], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reference = SentenceTransformer(resolve_embedder(BUNDLED_EMBEDDER), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


async def test_embed_reports_token_counts(stubs: Stubs) -> None:
    response = await stubs.embed.Embed(pb.EmbedRequest(texts=["hello", "hello world again and again"]))
    counts = [e.token_count for e in response.embeddings]
    # [CLS] hello [SEP] = 3 tokens; the longer text has more.
    assert counts[0] == 3
    assert counts[1] > counts[0]
    assert response.total_tokens == sum(counts)


async def test_similar_texts_are_closer_than_unrelated_ones(stubs: Stubs) -> None:
    response = await stubs.embed.Embed(
        pb.EmbedRequest(
            texts=["A cat sat on the mat.", "A kitten rested on the rug.", "Stock markets fell sharply."]
        )
    )
    cat, kitten, stocks = (np.array(e.values) for e in response.embeddings)
    assert cat @ kitten > cat @ stocks + 0.2
