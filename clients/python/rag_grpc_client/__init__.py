"""Typed Python client for rag-grpc: `AsyncClient` (asyncio) and `Client` (blocking).

It needs only grpcio and protobuf (no torch): `pip install clients/python`. Errors are RagClientError
subclasses carrying the status code, the request field the server named and its retry delay.
"""

from rag_grpc_client.aio import AsyncClient, GenerateStream
from rag_grpc_client.config import TLS, ClientOptions, Deadlines, Retries
from rag_grpc_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagClientError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from rag_grpc_client.sync import Client
from rag_grpc_client.types import (
    Answer,
    ChatMessage,
    Document,
    Embedding,
    Embeddings,
    Final,
    GenerateEvent,
    Hit,
    Hits,
    Info,
    IngestProgress,
    IngestResult,
    Retrieval,
    Sources,
    TextDelta,
    Timings,
    Usage,
    Written,
)

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "Answer",
    "AsyncClient",
    "Cancelled",
    "ChatMessage",
    "Client",
    "ClientOptions",
    "DeadlineExceeded",
    "Deadlines",
    "Document",
    "Embedding",
    "Embeddings",
    "FailedPrecondition",
    "Final",
    "GenerateEvent",
    "GenerateStream",
    "Hit",
    "Hits",
    "Info",
    "IngestProgress",
    "IngestResult",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RagClientError",
    "ResourceExhausted",
    "Retries",
    "Retrieval",
    "Sources",
    "TextDelta",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "Written",
]
