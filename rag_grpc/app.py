"""Process lifecycle: engines up, server up, wait for a signal, then shut down in order."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog

from rag_grpc.api.server import RagServer
from rag_grpc.engines import open_engines
from rag_grpc.ingest_files import demo_corpus_dir, documents_from_paths
from rag_grpc.service import RagService
from rag_grpc.service.cache import open_result_cache
from rag_grpc.settings import Settings

log = structlog.get_logger(__name__)


def build_interceptors(settings: Settings) -> Sequence[grpc.aio.ServerInterceptor]:
    """Interceptors chosen by the settings, outermost first."""
    return ()


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
    async with open_engines(settings) as engines, open_result_cache(settings) as cache:
        service = RagService(engines, settings, cache)
        if settings.demo_corpus:
            await load_demo_corpus(service)
        server = RagServer(settings, service, build_interceptors(settings))
        port = await server.start()
        if settings.port_file is not None:
            write_port_file(settings.port_file, port)
        await stop.wait()
        log.info("shutting_down", grace_s=settings.shutdown_grace_s)
        # A second signal skips the grace period.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop(0)))
        await server.stop(settings.shutdown_grace_s)
    # Leaving open_engines shut the engines (and the cache) down, after the server stopped taking calls;
    # a durable vector store writes its final snapshot there.
    log.info("shutdown_complete")
