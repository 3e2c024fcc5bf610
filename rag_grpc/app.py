"""Process lifecycle: engines up, server up, wait for a signal, then shut down in order."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from rag_grpc.api.api_keys import KeyRing
from rag_grpc.api.interceptors.admission import AdmissionInterceptor
from rag_grpc.api.interceptors.auth import AuthInterceptor
from rag_grpc.api.interceptors.metrics import MetricsInterceptor
from rag_grpc.api.interceptors.rate_limit import RateLimitInterceptor
from rag_grpc.api.interceptors.request_log import RequestLogInterceptor
from rag_grpc.api.server import RagServer
from rag_grpc.engines import open_engines
from rag_grpc.ingest_files import demo_corpus_dir, documents_from_paths
from rag_grpc.limits.admission import Admission
from rag_grpc.limits.rate_limiter import RateLimiter, build_rate_limiter
from rag_grpc.metrics import GrpcMetrics, ServiceMetrics
from rag_grpc.metrics_adapters import BatchSizeMetrics, CacheMetrics
from rag_grpc.service import RagService
from rag_grpc.service.cache import open_result_cache
from rag_grpc.settings import Settings

log = structlog.get_logger(__name__)


def ipaddress_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


GENERATION_METHODS = frozenset({"/rag_grpc.v1.GenerateService/Generate"})


def build_interceptors(
    settings: Settings,
    metrics: GrpcMetrics | None = None,
    limiter: RateLimiter | None = None,
    admission: Admission | None = None,
) -> Sequence[grpc.aio.ServerInterceptor]:
    """Interceptors chosen by the settings, outermost first (RagServer adds error mapping innermost):

    request log -> metrics -> auth -> rate limit -> admission -> (error mapping)

    The log line and the metrics are outside auth and the limits so that they see every call with the
    code its caller got, refusals included; auth comes before the limits, which are kept per caller;
    rate limits come before admission so a call over its quota never takes a queue place.
    Parts left to None are built from the settings (a limiter built here is never closed: pass one
    in when it holds a Redis connection).
    """
    metrics = metrics if metrics is not None else GrpcMetrics(CollectorRegistry())
    chain: list[grpc.aio.ServerInterceptor] = [
        RequestLogInterceptor(settings.log_payloads),
        MetricsInterceptor(metrics),
    ]
    keys = KeyRing.from_settings(settings)
    if len(keys):
        if settings.tls_cert_file is None and not ipaddress_is_loopback(settings.host):
            log.warning(
                "api_keys_over_plaintext", host=settings.host, hint="set tls_cert_file and tls_key_file"
            )
        open_services = (
            (health.SERVICE_NAME, reflection.SERVICE_NAME) if settings.auth_open_health_and_reflection else ()
        )
        chain.append(AuthInterceptor(keys, metrics, open_services))
    limiter = limiter if limiter is not None else build_rate_limiter(settings)
    if limiter is not None:
        chain.append(RateLimitInterceptor(limiter, metrics, settings.default_max_tokens))
    admission = admission if admission is not None else Admission.for_generations(settings)
    chain.append(AdmissionInterceptor(admission, metrics, GENERATION_METHODS))
    return chain


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
    grpc_metrics, service_metrics = GrpcMetrics(registry), ServiceMetrics(registry)
    admission = Admission.for_generations(settings)
    limiter = build_rate_limiter(settings)
    try:
        async with (
            open_engines(
                settings,
                embed_stats=BatchSizeMetrics(service_metrics.embed_batch_size),
                search_stats=BatchSizeMetrics(service_metrics.search_batch_size),
            ) as engines,
            open_result_cache(settings, CacheMetrics(service_metrics)) as cache,
        ):
            service = RagService(engines, settings, cache, service_metrics)
            if settings.demo_corpus:
                await load_demo_corpus(service)
            interceptors = build_interceptors(settings, grpc_metrics, limiter, admission)
            server = RagServer(settings, service, interceptors, metrics_registry=registry)
            port = await server.start()
            if settings.port_file is not None:
                write_port_file(settings.port_file, port)
            await stop.wait()
            log.info("shutting_down", grace_s=settings.shutdown_grace_s)
            # Queued generations are told to go elsewhere now; running ones get the grace period.
            admission.drain()
            # A second signal skips the grace period.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop(0)))
            await server.stop(settings.shutdown_grace_s)
    finally:
        if limiter is not None:
            await limiter.aclose()
    # Leaving open_engines shut the engines (and the cache) down, after the server stopped taking calls;
    # a durable vector store writes its final snapshot there.
    log.info("shutdown_complete")
