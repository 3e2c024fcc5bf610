"""grpc.aio server interceptors. Each one handles unary and streaming RPCs alike (see base.py)."""
