"""Several workers as one: least outstanding work first, ejection after failures, probes to bring back.

Routing by load and prefix cache across a large fleet is a gateway's job (SMG, llm-d); this pool is for
a handful of workers or gateways listed in the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from rag_grpc.engines.remote.worker import Worker, WorkerFailure, WorkerModel
from rag_grpc.errors import Unavailable

log = structlog.get_logger(__name__)

# Upper bounds of the per-endpoint request-duration histogram, in seconds.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))


@dataclass(slots=True)
class EndpointStatus:
    """One endpoint as the pool sees it; also what Info and the metrics report."""

    url: str
    healthy: bool = False
    in_flight: int = 0
    # Requests the worker last reported queued or running, all callers' (gRPC workers only).
    reported_load: int = 0
    consecutive_failures: int = 0
    last_problem: str = ""
    requests: int = 0
    failures: int = 0
    ejections: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0

    @property
    def outstanding(self) -> int:
        return max(self.in_flight, self.reported_load)

    def observe(self, seconds: float) -> None:
        self.latency_sum_s += seconds
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.latency_counts[i] += 1
                break


class EndpointPool:
    def __init__(
        self, workers: Sequence[Worker], *, eject_after_failures: int, probe_interval_s: float
    ) -> None:
        self.workers = {worker.url: worker for worker in workers}
        self.status = {worker.url: EndpointStatus(worker.url) for worker in workers}
        self._eject_after = eject_after_failures
        self._probe_interval_s = probe_interval_s
        self._turn = itertools.count()  # breaks ties in turn, so equal endpoints share the work
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> WorkerModel:
        """Connects to every endpoint; starts when at least one answers, naming the ones that did not."""
        results = await asyncio.gather(*(w.connect() for w in self.workers.values()), return_exceptions=True)
        models: list[WorkerModel] = []
        for (url, status), result in zip(self.status.items(), results, strict=True):
            if isinstance(result, WorkerFailure):
                status.last_problem = result.problem
                log.warning("generator_endpoint_unreachable", endpoint=url, problem=result.problem)
            elif isinstance(result, BaseException):
                raise result
            else:
                status.healthy = True
                models.append(result)
        if not models:
            raise Unavailable(
                "no generator endpoint answered: "
                + "; ".join(f"{s.url} ({s.last_problem})" for s in self.status.values())
            )
        served = {m.served_name for m in models}
        if len(served) > 1:
            raise Unavailable(f"generator endpoints serve different models: {sorted(served)}")
        self._prober = asyncio.create_task(self._probe_forever(), name="generator-endpoint-probes")
        return models[0]

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for worker in self.workers.values():
            await worker.close()

    def healthy(self) -> list[EndpointStatus]:
        return [s for s in self.status.values() if s.healthy]

    def choose(self, exclude: set[str]) -> EndpointStatus | None:
        candidates = [s for s in self.healthy() if s.url not in exclude]
        if not candidates:
            return None
        turn = next(self._turn)
        n = len(candidates)
        # Least outstanding work; among equals, the one whose turn it is.
        return min(enumerate(candidates), key=lambda ic: (ic[1].outstanding, (ic[0] - turn) % n))[1]

    def succeeded(self, status: EndpointStatus) -> None:
        status.consecutive_failures = 0

    def failed(self, status: EndpointStatus, problem: str) -> None:
        status.failures += 1
        status.consecutive_failures += 1
        status.last_problem = problem
        if status.healthy and status.consecutive_failures >= self._eject_after:
            status.healthy = False
            status.ejections += 1
            log.warning("generator_endpoint_ejected", endpoint=status.url, problem=problem)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await asyncio.gather(*(self._probe(url) for url in self.workers))

    async def _probe(self, url: str) -> None:
        status = self.status[url]
        try:
            load = await self.workers[url].probe()
        except WorkerFailure as failure:
            if status.healthy:
                self.failed(status, failure.problem)
            return
        except Exception:
            log.exception("generator_endpoint_probe_crashed", endpoint=url)
            return
        status.reported_load = load or 0
        if not status.healthy:
            # Only a probe brings an endpoint back; requests' own failures are not forgotten by one, so a
            # worker that answers health checks but fails every request still leaves the pool.
            status.healthy = True
            status.consecutive_failures = 0
            log.info("generator_endpoint_restored", endpoint=url)
