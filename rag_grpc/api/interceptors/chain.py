"""The interceptor chain: declared here once, outermost first, with the reason for each position.

0. TracingInterceptor (only when traces are on, see rag_grpc/tracing.py): outermost, so that its server
   span covers the whole call, refusals included, and the request log line, written inside the span,
   carries its trace id.
1. RequestLogInterceptor: outermost after tracing, so its line sees every call with the code the caller
   got, refusals included, and the request id it assigns is known to everything inside.
2. MetricsInterceptor: outside auth and the limits for the same reason: refused calls are counted
   with their code.
3. AuthInterceptor (when keys are configured): before the limits, which are kept per caller.
4. RateLimitInterceptor (when rules are configured): a call over its quota is refused before any work.
5. ErrorMappingInterceptor: domain errors raised by everything inside it become statuses here, through
   the one map in api/status.py. The interceptors outside it refuse calls through that map themselves.
6. DrainInterceptor: once the server drains, new API calls get UNAVAILABLE (raised, so mapped by 5).
7. DeadlineCeilingInterceptor: a deadline for calls that set none; its DeadlineExceeded is mapped by 5.
8. RequestDecodingInterceptor: innermost, next to the handler: a request that does not parse becomes
   INVALID_ARGUMENT (mapped by 5) instead of grpc's UNKNOWN.

Admission of generations is not an interceptor: the service holds a generation's slot exactly while
the engine works on it (see RagService.generate), so a caller that stops reading cannot keep one.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from rag_grpc.api.api_keys import KeyRing
from rag_grpc.api.interceptors.auth import AuthInterceptor
from rag_grpc.api.interceptors.deadline import DeadlineCeilingInterceptor
from rag_grpc.api.interceptors.decoding import RequestDecodingInterceptor
from rag_grpc.api.interceptors.drain import DrainInterceptor
from rag_grpc.api.interceptors.errors import ErrorMappingInterceptor
from rag_grpc.api.interceptors.metrics import MetricsInterceptor
from rag_grpc.api.interceptors.rate_limit import RateLimitInterceptor
from rag_grpc.api.interceptors.request_log import RequestLogInterceptor
from rag_grpc.limits.rate_limiter import RateLimiter
from rag_grpc.metrics import GrpcMetrics
from rag_grpc.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def interceptor_chain(
    settings: Settings,
    metrics: GrpcMetrics,
    limiter: RateLimiter | None,
    drain: DrainInterceptor,
    tracer: Tracer | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The chain for `settings`, outermost first (see the module docstring for the order). `tracer`: the
    traces' tracer when they are on; None leaves tracing out of the chain."""
    security, limits = settings.security, settings.limits
    chain: list[grpc.aio.ServerInterceptor] = []
    if tracer is not None:
        from rag_grpc.api.interceptors.tracing import TracingInterceptor

        chain.append(TracingInterceptor(tracer))
    chain += [
        RequestLogInterceptor(settings.observability.log_payloads),
        MetricsInterceptor(metrics),
    ]
    keys = KeyRing.from_settings(security)
    if len(keys):
        host = settings.server.host
        if security.tls_cert_file is None and not _is_loopback(host):
            log.warning("api_keys_over_plaintext", host=host, hint="set tls_cert_file and tls_key_file")
        open_services = (
            (health.SERVICE_NAME, reflection.SERVICE_NAME) if security.auth_open_health_and_reflection else ()
        )
        chain.append(AuthInterceptor(keys, metrics, open_services))
    if limiter is not None:
        chain.append(RateLimitInterceptor(limiter, metrics, limits.default_max_tokens))
    chain += [
        ErrorMappingInterceptor(),
        drain,
        DeadlineCeilingInterceptor(limits.call_deadline_ceiling_s),
        RequestDecodingInterceptor(),
    ]
    return chain
