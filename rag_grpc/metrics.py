"""Prometheus metrics, registered in one injectable CollectorRegistry (never the global one).

`GrpcMetrics` is what the interceptors record (go-grpc-prometheus names), `ServiceMetrics` what the
service records where the work happens. Both are handed over by constructor, so a test builds a
fresh registry and sees only its own numbers. Names and buckets follow peer systems (vLLM, TEI,
Triton); see shared/reference/peer-systems.md section 6.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class _Slots(Protocol):
    """What the gauges read from admission control (rag_grpc.limits.admission.Admission)."""

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...


HANDLING_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
# vLLM's buckets.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
    160,
    640,
    2560,
)
INTER_TOKEN_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
)
TOKENS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
# TEI's batch-size buckets: powers of two up to 4096.
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
RETRIEVE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RETRIEVE_RESULTS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100)


class GrpcMetrics:
    """Per-RPC metrics and the refusals of the interceptors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*GRPC_LABELS, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (for streams: to the last message).",
            GRPC_LABELS,
            buckets=HANDLING_SECONDS_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total", "Request messages received.", GRPC_LABELS, registry=registry
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total", "Response messages sent.", GRPC_LABELS, registry=registry
        )
        self.auth_failures = Counter(
            "rag_auth_failures_total",
            "Calls refused by authentication or authorization.",
            ("reason",),
            registry=registry,
        )
        self.rate_limited = Counter(
            "rag_rate_limited_total",
            "Calls refused by a rate limit or the admission queue.",
            ("caller", "reason"),
            registry=registry,
        )
        self.generations_running = Gauge(
            "rag_generate_running",
            "Generations holding a slot: the engine is working on them.",
            registry=registry,
        )
        self.generations_waiting = Gauge(
            "rag_generate_waiting", "Generate calls queued for an admission slot.", registry=registry
        )
        self.engine_healthy = Gauge(
            "rag_engine_healthy",
            "1 while the engine passed its last health check, else 0 (engine: embedder, vector_store, "
            "generator:<model>); what the gRPC health service reports is derived from these.",
            ("engine",),
            registry=registry,
        )

    def count_refusal(self, caller: str, reason: str) -> None:
        """A call refused by admission (caller_quota, queue_full, draining)."""
        self.rate_limited.labels(caller, reason).inc()

    def record_engine_health(self, problems: Mapping[str, str | None]) -> None:
        """Each engine's last health check (its problem, None when healthy)."""
        for engine, problem in problems.items():
            self.engine_healthy.labels(engine).set(0 if problem else 1)

    def watch_admission(self, admission: _Slots) -> None:
        """Slot counts are read at scrape time, so they are right whoever changed them."""
        self.generations_running.set_function(lambda: admission.running)
        self.generations_waiting.set_function(lambda: admission.waiting)


class ServiceMetrics:
    """Domain metrics, recorded by the service where the work happens."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.time_to_first_token = Histogram(
            "rag_generate_time_to_first_token_seconds",
            "Time from the start of Generate to its first text.",
            ("model",),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "rag_generate_inter_token_latency_seconds",
            "Time between two streamed text deltas.",
            ("model",),
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "rag_generate_prompt_tokens_total",
            "Prompt tokens read by generators.",
            ("model",),
            registry=registry,
        )
        self.generation_tokens = Counter(
            "rag_generate_generation_tokens_total", "Tokens generated.", ("model",), registry=registry
        )
        self.request_generation_tokens = Histogram(
            "rag_generate_request_generation_tokens",
            "Tokens generated per Generate call.",
            ("model",),
            buckets=TOKENS_BUCKETS,
            registry=registry,
        )
        self.abstained = Counter(
            "rag_generate_abstained",
            "Grounded Generate calls the service answered itself because no retrieved document mentions the "
            "question's subject (grounding_check).",
            registry=registry,
        )
        self.routes = Counter(
            "rag_route",
            "Generate calls that asked for model 'auto', by the generator the router chose and why: easy, "
            "ambiguous_sources, weak_sources, open_question.",
            ("model", "reason"),
            registry=registry,
        )
        self.finished = Counter(
            "rag_generate_finished_total",
            "Generate calls by how they ended: stop, length, cancelled (by the server), abort (the caller "
            "left), error.",
            ("model", "finish_reason"),
            registry=registry,
        )
        # Recorded by the micro-batchers, which form the model batches (see app.metered_stats).
        self.embed_batch_size = Histogram(
            "rag_embed_batch_size",
            "Texts per embedding model call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.search_batch_size = Histogram(
            "rag_search_batch_size",
            "Queries per index search call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.embed_tokens = Counter(
            "rag_embed_tokens_total", "Tokens embedded (cache hits excluded).", registry=registry
        )
        self.retrieve_seconds = Histogram(
            "rag_retrieve_duration_seconds",
            "Time to answer one retrieval (embedding the query included).",
            buckets=RETRIEVE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.retrieve_results = Histogram(
            "rag_retrieve_results",
            "Hits returned per retrieval.",
            buckets=RETRIEVE_RESULTS_BUCKETS,
            registry=registry,
        )
        self.index_vectors = Gauge("rag_index_vectors", "Vectors in the index.", registry=registry)
        self.index_version = Gauge(
            "rag_index_version", "Version of the index; every write increases it.", registry=registry
        )
        self.cache_hits = Counter(
            "rag_cache_hits_total", "Cache lookups that hit.", ("cache",), registry=registry
        )
        self.cache_misses = Counter(
            "rag_cache_misses_total", "Cache lookups that missed.", ("cache",), registry=registry
        )
        self.cache_errors = Counter(
            "rag_cache_errors_total",
            "Cache operations that failed (counted as misses).",
            ("cache",),
            registry=registry,
        )

    def record_cache_lookup(self, cache: str, hits: int, misses: int) -> None:
        if hits:
            self.cache_hits.labels(cache).inc(hits)
        if misses:
            self.cache_misses.labels(cache).inc(misses)

    def record_cache_error(self, cache: str) -> None:
        self.cache_errors.labels(cache).inc()

    def watch_index(self, size: Callable[[], float], version: Callable[[], float] | None = None) -> None:
        """The index size (and version) are read at scrape time, so they are right whoever changed the index."""
        self.index_vectors.set_function(size)
        if version is not None:
            self.index_version.set_function(version)


class MetricsHttpServer:
    """The /metrics endpoint on its own port, served from a daemon thread by prometheus_client."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry, self._host, self._port = registry, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Lock()

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def start(self) -> None:
        self._server, self._thread = start_http_server(self._port, self._host, self._registry)

    def stop(self) -> None:
        # Called from worker threads, possibly twice at once (a second SIGTERM stops the server while the
        # drain is stopping it): whoever takes the server stops it.
        with self._stopping:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
