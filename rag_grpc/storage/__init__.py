"""Durability for the vector store: a write-ahead log, snapshots, and the store wrapper that uses them."""

from rag_grpc.storage.durable_store import DurableVectorStore
from rag_grpc.storage.files import StorageCorrupted

__all__ = ["DurableVectorStore", "StorageCorrupted"]
