"""The engine factory builds what the backend settings name."""

from __future__ import annotations

import pytest

from rag_grpc.engines.factory import build_embedder, build_vector_store
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.settings import EngineSettings, Settings


def test_the_vector_store_backend_selects_the_store() -> None:
    settings = Settings(_env_file=None, vector_store_backend="faiss", vector_store_device="cpu")  # type: ignore[call-arg]
    assert isinstance(build_vector_store(settings, 8), FaissVectorStore)


def test_a_backend_without_a_builder_is_refused() -> None:
    # Validation admits only known backends; model_construct skips it, as a backend added to the
    # Literal without a builder would.
    unknown = EngineSettings.model_construct(embedder_backend="onnx", vector_store_backend="qdrant")
    with pytest.raises(AssertionError):
        build_embedder(unknown)
    with pytest.raises(AssertionError):
        build_vector_store(Settings(_env_file=None).model_copy(update={"engines": unknown}), 8)  # type: ignore[call-arg]
