"""The Prometheus endpoint's server: stopping it twice at once (a second SIGTERM during the drain) is safe."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client import CollectorRegistry

from rag_grpc.metrics import MetricsHttpServer


def test_concurrent_stops_stop_it_once_without_error() -> None:
    server = MetricsHttpServer(CollectorRegistry(), "127.0.0.1", 0)
    server.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        assert response.status == 200
    errors: list[Exception] = []

    def stop() -> None:
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001  # the failure under test (AttributeError) surfaces here
            errors.append(exc)

    threads = [threading.Thread(target=stop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert server.port == 0
