"""Message stubs generated from protos/rag_grpc/v1/rag.proto at install (see ../../setup.py)."""
