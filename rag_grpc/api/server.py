"""RagServer assembles the grpc.aio server: servicers, the interceptor chain, health (kept in step with
the engines) and reflection, TLS, and the metrics endpoint that lives as long as the server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from rag_grpc.api import servicers
from rag_grpc.api.health_monitor import HealthMonitor
from rag_grpc.api.interceptors.chain import interceptor_chain
from rag_grpc.api.interceptors.drain import DrainInterceptor
from rag_grpc.api.tls import server_credentials
from rag_grpc.limits.rate_limiter import RateLimiter
from rag_grpc.metrics import GrpcMetrics, MetricsHttpServer
from rag_grpc.service import RagService
from rag_grpc.settings import ServerSettings, Settings
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc

# How long a draining server keeps taking new calls after reporting NOT_SERVING (bounded by the grace).
_HEALTH_PROPAGATION_S = 0.3

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def server_options(server: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.max_receive_message_length", server.max_message_bytes),
        # Generations can be quiet for a while between tokens; let clients keep the connection alive.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        # A second server on the same port must fail loudly, not share it.
        ("grpc.so_reuseport", 0),
    ]


class RagServer:
    def __init__(
        self,
        settings: Settings,
        service: RagService,
        *,
        metrics_registry: CollectorRegistry | None = None,
        grpc_metrics: GrpcMetrics | None = None,
        limiter: RateLimiter | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`metrics_registry` is served on metrics_port while the server runs (if both are set);
        `grpc_metrics` are recorded there (a private registry when not given). `limiter` enforces the rate
        limits (None: no limits); it is the caller's to close. `tracer`: a server span per call when
        traces are on (None: off)."""
        self._settings = settings
        observability = settings.observability
        self.service = service
        self._metrics_http = (
            MetricsHttpServer(metrics_registry, observability.metrics_host, observability.metrics_port)
            if observability.metrics_port and metrics_registry is not None
            else None
        )
        grpc_metrics = grpc_metrics if grpc_metrics is not None else GrpcMetrics(CollectorRegistry())
        self.health = health.aio.HealthServicer()
        self._health_monitor = HealthMonitor(
            self.health,
            service.engine_health,
            settings.server.health_check_interval_s,
            on_checked=grpc_metrics.record_engine_health,
        )
        self._drain = DrainInterceptor()
        chain = interceptor_chain(settings, grpc_metrics, limiter, self._drain, tracer)
        self._server = grpc.aio.server(interceptors=chain, options=server_options(settings.server))
        pb_grpc.add_EmbedServiceServicer_to_server(servicers.EmbedServicer(service), self._server)
        pb_grpc.add_RetrieveServiceServicer_to_server(servicers.RetrieveServicer(service), self._server)
        pb_grpc.add_GenerateServiceServicer_to_server(servicers.GenerateServicer(service), self._server)
        pb_grpc.add_DocumentServiceServicer_to_server(servicers.DocumentServicer(service), self._server)
        pb_grpc.add_InfoServiceServicer_to_server(servicers.InfoServicer(service), self._server)
        pb_grpc.add_AdminServiceServicer_to_server(servicers.AdminServicer(service), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Binds, starts and reports SERVING; returns the bound port (useful with port 0)."""
        credentials = server_credentials(self._settings.security)
        if credentials is None:
            self.port = self._server.add_insecure_port(self._settings.server.address)
        else:
            self.port = self._server.add_secure_port(self._settings.server.address, credentials)
        if self.port == 0:
            raise OSError(f"could not bind {self._settings.server.address}")
        if self._metrics_http is not None:
            self._metrics_http.start()
        await self._server.start()
        await self._health_monitor.update()
        self._health_monitor.start()
        tls = (
            "off" if credentials is None else "mutual" if self._settings.security.tls_client_ca_file else "on"
        )
        log.info(
            "server_started",
            address=f"{self._settings.server.host}:{self.port}",
            tls=tls,
            metrics_port=self.metrics_port or None,
        )
        return self.port

    @property
    def metrics_port(self) -> int:
        return self._metrics_http.port if self._metrics_http is not None else 0

    async def drain(self, grace: float | None) -> None:
        """Health goes NOT_SERVING first so balancers stop sending; after _HEALTH_PROPAGATION_S new API
        calls get UNAVAILABLE, while those in flight get what is left of `grace` seconds to finish.
        The server keeps its port and connections: see stop() and app.serve for how it then ends."""
        await self._health_monitor.stop()
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0)
        # Clients balancing on health (round_robin with healthCheckConfig) see NOT_SERVING pushed on their
        # watch and stop picking this replica; calls they already sent are still served meanwhile.
        await asyncio.sleep(min(grace or 0, _HEALTH_PROPAGATION_S))
        self._drain.start_draining()
        # Generations still waiting for a slot are told to go elsewhere now; running ones get the grace.
        self.service.admission.drain()
        if grace:
            try:
                await asyncio.wait_for(self._drain.wait_idle(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.warning("drain_grace_expired", cancelled_calls=self._drain.in_flight)

    async def stop(self, grace: float | None) -> None:
        """drain(), then grpc's own shutdown with what is left of `grace`; the rest are cancelled.

        grpc's shutdown answers CANCELLED (which no client or proxy may retry) to every call that reached
        the server but was not yet handed to the application, and to calls arriving until the peer reads
        its GOAWAY: harmless in process, where nobody calls any more. `rag-grpc serve` ends differently
        (app.serve)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0)
        await self.drain(grace)
        await self._server.stop(max(0.0, deadline - loop.time()))
        await self.stop_metrics()
        log.info("server_stopped")

    async def stop_metrics(self) -> None:
        if self._metrics_http is not None:
            # shutdown() waits for the serving thread's poll loop (up to half a second): not on the event loop.
            await asyncio.to_thread(self._metrics_http.stop)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
