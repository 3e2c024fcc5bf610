"""Rate limiting (token buckets, in memory or in Redis) and admission control, free of gRPC."""
