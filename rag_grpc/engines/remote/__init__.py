"""Generation on remote workers: vLLM's gRPC protocol and OpenAI-compatible chat APIs, pooled."""

from rag_grpc.engines.remote.pool import EndpointPool, EndpointStatus
from rag_grpc.engines.remote.remote_generator import RemoteGenerator

__all__ = ["EndpointPool", "EndpointStatus", "RemoteGenerator"]
