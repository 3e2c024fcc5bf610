"""The transport-agnostic RAG service: validation, prompt building and orchestration of engines."""

from rag_grpc.service.rag_service import RagService

__all__ = ["RagService"]
