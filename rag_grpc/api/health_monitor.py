"""Keeps the gRPC health service in step with the engines.

Every `interval_s` the monitor asks each engine for its health (RagService.engine_health) and sets
each API service SERVING or NOT_SERVING by the engines it needs; the overall status ("") is SERVING
only while every engine is healthy. Balancers and Kubernetes probes watch these, so a replica whose
generator died stops getting traffic, and gets it again once the engine is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from grpc_health.v1 import health, health_pb2

from rag_grpc.v1 import rag_pb2 as pb

log = structlog.get_logger(__name__)

EngineHealth = dict[str, str | None]

_SERVICE = {name: service.full_name for name, service in pb.DESCRIPTOR.services_by_name.items()}


def serving_by_service(problems: EngineHealth) -> dict[str, bool]:
    """Which services can work, given each engine's problem (None when healthy)."""
    embedder = problems.get("embedder") is None
    store = problems.get("vector_store") is None
    generators = all(problem is None for name, problem in problems.items() if name.startswith("generator:"))
    return {
        health.OVERALL_HEALTH: all(problem is None for problem in problems.values()),
        _SERVICE["EmbedService"]: embedder,
        _SERVICE["RetrieveService"]: embedder and store,
        # A grounded answer needs retrieval as much as the generator.
        _SERVICE["GenerateService"]: generators and embedder and store,
        _SERVICE["DocumentService"]: embedder and store,
        _SERVICE["InfoService"]: True,
        _SERVICE["AdminService"]: store,
    }


class HealthMonitor:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        check: Callable[[], Awaitable[EngineHealth]],
        interval_s: float,
        on_checked: Callable[[EngineHealth], None] | None = None,
    ) -> None:
        """`on_checked` is told each check's result (the server records it as rag_engine_healthy)."""
        self._servicer = servicer
        self._check = check
        self._on_checked = on_checked
        self._interval_s = interval_s
        self._serving: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    async def update(self) -> None:
        """Checks the engines once and sets every status that changed."""
        problems = await self._check()
        if self._on_checked is not None:
            self._on_checked(problems)
        for service, serving in serving_by_service(problems).items():
            if self._serving.get(service) == serving:
                continue
            if service in self._serving or not serving:
                log.warning(
                    "health_changed",
                    service=service or "(overall)",
                    serving=serving,
                    problems={name: problem for name, problem in problems.items() if problem},
                )
            self._serving[service] = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self._servicer.set(service, status)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.update()
            except Exception:
                log.exception("health_check_failed")
