"""vLLM's gRPC worker protocol (`vllm.grpc.engine.VllmEngine`), compiled at install from the pinned
smg-grpc-proto's .proto files under file names of our own (see setup.py): never edited or committed."""
