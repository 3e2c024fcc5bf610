"""Prometheus families for the remote workers of each pool, read from the pools at scrape time.

The pools keep plain counters (rag_grpc.engines.remote.pool.EndpointStatus); this collector exports
them, so the pool needs no registry and the numbers are whatever they are at the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from rag_grpc.engines.remote.pool import LATENCY_BUCKETS_S
from rag_grpc.engines.remote.remote_generator import RemoteGenerator

_LABELS = ("model", "endpoint")


class EndpointCollector(Collector):
    def __init__(self, generators: Sequence[RemoteGenerator]) -> None:
        self._generators = list(generators)

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "rag_generator_endpoint_healthy",
            "1 while the worker is in its pool, 0 while ejected.",
            labels=_LABELS,
        )
        in_flight = GaugeMetricFamily(
            "rag_generator_endpoint_in_flight", "Requests this server has on the worker now.", labels=_LABELS
        )
        requests = CounterMetricFamily(
            "rag_generator_endpoint_requests", "Requests sent to the worker.", labels=_LABELS
        )
        failures = CounterMetricFamily(
            "rag_generator_endpoint_failures",
            "Requests and probes the worker failed (errors, malformed data, nothing in time).",
            labels=_LABELS,
        )
        ejections = CounterMetricFamily(
            "rag_generator_endpoint_ejections",
            "Times the worker left its pool after failures.",
            labels=_LABELS,
        )
        seconds = HistogramMetricFamily(
            "rag_generator_endpoint_request_seconds",
            "Time from sending a request to the worker to its last chunk (or failure).",
            labels=_LABELS,
        )
        for generator in self._generators:
            model = generator.info.model
            for endpoint, status in zip(generator.info.endpoints, generator.endpoints, strict=True):
                labels = [model, endpoint.url]
                healthy.add_metric(labels, float(status.healthy))
                in_flight.add_metric(labels, status.in_flight)
                requests.add_metric(labels, status.requests)
                failures.add_metric(labels, status.failures)
                ejections.add_metric(labels, status.ejections)
                cumulative, buckets = 0, []
                for bound, count in zip(LATENCY_BUCKETS_S, status.latency_counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                seconds.add_metric(labels, buckets, status.latency_sum_s)
        yield from (healthy, in_flight, requests, failures, ejections, seconds)
