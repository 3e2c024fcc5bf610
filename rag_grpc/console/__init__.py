"""`rag-grpc ask`, `search`, `ingest` and `status`: the service for people at a terminal, through the typed
client (rag_grpc_client), sharing one set of connection options."""
