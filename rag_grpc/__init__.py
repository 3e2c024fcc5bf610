"""rag-grpc: embeddings, retrieval and streamed generation behind one gRPC endpoint."""

__version__ = "0.1.0"
