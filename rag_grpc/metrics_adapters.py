"""The plain stats hooks of the result cache and the micro-batchers, recording into Prometheus.

Those components count in plain objects and take a subclass from whoever exports metrics; these are
the subclasses. (They live apart from metrics.py, which the service imports, to keep imports acyclic.)
"""

from __future__ import annotations

from prometheus_client import Histogram

from rag_grpc.engines.micro_batcher import BatcherStats
from rag_grpc.metrics import ServiceMetrics
from rag_grpc.service.cache import CacheKind, CacheStats


class BatchSizeMetrics(BatcherStats):
    """Observes the size of every batch a micro-batcher runs."""

    def __init__(self, sizes: Histogram) -> None:
        super().__init__()
        self._sizes = sizes

    def record_batch(self, items: int) -> None:
        super().record_batch(items)
        self._sizes.observe(items)


class CacheMetrics(CacheStats):
    """Counts cache hits, misses and errors per kind of cached result."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def record(self, kind: CacheKind, hits: int, misses: int) -> None:
        super().record(kind, hits, misses)
        if hits:
            self._metrics.cache_hits.labels(kind.value).inc(hits)
        if misses:
            self._metrics.cache_misses.labels(kind.value).inc(misses)

    def record_error(self, kind: CacheKind) -> None:
        super().record_error(kind)
        self._metrics.cache_errors.labels(kind.value).inc()
