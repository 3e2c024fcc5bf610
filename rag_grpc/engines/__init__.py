"""Engines behind small interfaces (see base.py); `open_engines` builds the configured ones."""

from rag_grpc.engines.base import Embedder, Generator, VectorStore
from rag_grpc.engines.factory import Engines, open_engines

__all__ = ["Embedder", "Engines", "Generator", "VectorStore", "open_engines"]
