"""Process lifecycle: engines up, server up, wait for a signal, then shut down in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from rag_grpc.api.server import RagServer
from rag_grpc.engines import Engines, open_engines
from rag_grpc.engines.micro_batcher import BatcherStats
from rag_grpc.engines.remote import RemoteGenerator
from rag_grpc.engines.remote.metrics import EndpointCollector
from rag_grpc.ingest_files import demo_corpus_dir, documents_from_paths
from rag_grpc.limits.admission import Admission
from rag_grpc.limits.rate_limiter import RateLimiter, build_rate_limiter
from rag_grpc.metrics import GrpcMetrics, ServiceMetrics
from rag_grpc.service import RagService
from rag_grpc.service.cache import CacheStats, ResultCache, open_result_cache
from rag_grpc.settings import Settings
from rag_grpc.tracing import Tracing

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MeteredStats:
    """The stats hooks of the micro-batchers and the result cache, recording into `metrics`."""

    embed: BatcherStats
    search: BatcherStats
    cache: CacheStats

    @classmethod
    def into(cls, metrics: ServiceMetrics) -> MeteredStats:
        return cls(
            embed=BatcherStats(on_batch=metrics.embed_batch_size.observe),
            search=BatcherStats(on_batch=metrics.search_batch_size.observe),
            cache=CacheStats(on_lookup=metrics.record_cache_lookup, on_error=metrics.record_cache_error),
        )


def build_server(
    settings: Settings,
    engines: Engines,
    *,
    registry: CollectorRegistry,
    service_metrics: ServiceMetrics | None = None,
    cache: ResultCache | None = None,
    limiter: RateLimiter | None = None,
    tracing: Tracing | None = None,
) -> RagServer:
    """The service and its server as `rag-grpc serve` runs them, every metric in `registry`, and spans
    through `tracing` when traces are on.

    Admission refusals and slot counts are recorded with the gRPC metrics (rag_rate_limited_total,
    rag_generate_running/waiting), next to the rate limits' refusals.
    """
    grpc_metrics = GrpcMetrics(registry)
    admission = Admission.for_generations(settings.limits, on_refused=grpc_metrics.count_refusal)
    grpc_metrics.watch_admission(admission)
    service_metrics = service_metrics if service_metrics is not None else ServiceMetrics(registry)
    remote = [g for g in engines.generators.values() if isinstance(g, RemoteGenerator)]
    if remote:
        registry.register(EndpointCollector(remote))
    tracer = tracing.tracer if tracing is not None else None
    service = RagService(engines, settings, cache, service_metrics, admission, tracer=tracer)
    return RagServer(
        settings,
        service,
        metrics_registry=registry,
        grpc_metrics=grpc_metrics,
        limiter=limiter,
        tracer=tracer,
    )


async def load_demo_corpus(service: RagService) -> None:
    documents = list(documents_from_paths([demo_corpus_dir()]))
    result = await service.upsert(documents)
    log.info("demo_corpus_loaded", documents=result.count, index_version=result.index_version)


def write_port_file(path: Path, port: int) -> None:
    """Renamed into place, so a reader never sees a half-written number."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(f"{port}\n")
    os.replace(staging, path)


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    service_metrics = ServiceMetrics(registry)
    stats = MeteredStats.into(service_metrics)
    limiter = build_rate_limiter(settings.limits)
    tracing = Tracing.from_environment()
    try:
        async with (
            open_engines(settings, embed_stats=stats.embed, search_stats=stats.search) as engines,
            open_result_cache(settings.cache, stats.cache) as cache,
        ):
            server = build_server(
                settings,
                engines,
                registry=registry,
                service_metrics=service_metrics,
                cache=cache,
                limiter=limiter,
                tracing=tracing,
            )
            if settings.server.demo_corpus:
                await load_demo_corpus(server.service)
            port = await server.start()
            if settings.server.port_file is not None:
                write_port_file(settings.server.port_file, port)
            await stop.wait()
            log.info("shutting_down", grace_s=settings.server.shutdown_grace_s)
            # A second signal skips the grace period.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop(0)))
            await server.drain(settings.server.shutdown_grace_s)
            await server.stop_metrics()
    finally:
        if limiter is not None:
            await limiter.aclose()
        if tracing is not None:
            # Exports the spans still buffered (a blocking call: the server is already down).
            await asyncio.to_thread(tracing.shutdown)
    # Leaving open_engines shut the engines (and the cache) down once no call was running any more (new
    # ones get UNAVAILABLE); a durable vector store writes its final snapshot there.
    log.info("shutdown_complete")
    exit_without_grpc_shutdown()


def exit_without_grpc_shutdown() -> None:
    """Ends the process with its sockets still open, so the kernel closes them, after the drain.

    grpc's own shutdown would answer CANCELLED to the calls that reached the server but were not yet
    handed to the application and to those arriving until the peer reads its GOAWAY, and neither a
    client's retry policy nor nginx may retry CANCELLED. A proxy without health checks (nginx) keeps
    sending to a draining replica until then. Closed sockets instead fail those calls as a lost
    connection, which nginx answers 502 and gRPC clients see as UNAVAILABLE: retried elsewhere. No
    call of the application is cut: all had ended (or the grace had) when the drain returned."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
