"""Generated protobuf and gRPC stubs for the rag_grpc.v1 API (built from protos/ at install time)."""
