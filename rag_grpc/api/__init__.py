"""The gRPC side: servicers, converters, interceptors, the status map and the server assembly."""
