"""OpenTelemetry traces, configured by the standard OTEL_* environment variables, off by default.

Traces are on when the environment asks for an exporter: `OTEL_TRACES_EXPORTER` names one (`otlp`,
`console`; `none` is off), or, with that variable unset, an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`). `OTEL_SDK_DISABLED=true` turns
them off whatever else is set. Everything else is the SDK's own reading of the standard variables:
`OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (`grpc`, the default here as in vLLM and the Python SDK's own
`otlp`, or `http/protobuf`), endpoint, headers, certificates and timeout; `OTEL_SERVICE_NAME` (default
`rag-grpc`) and `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER(_ARG)`; `OTEL_BSP_*` for the batch
processor; `OTEL_PROPAGATORS` for the incoming context (W3C `traceparent` by default).

Off costs nothing per call: no tracer provider or exporter is built, no tracing interceptor is in the
chain, and the service's steps use one shared no-op context manager (see RagService._span).

What is traced: a server span per RPC (api/interceptors/tracing.py) that continues the caller's trace,
and inside it the service's spans (service/rag_service.py): cache lookups, embedding, index search,
retrieval, prompt building and generation, with an event at the first token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from rag_grpc import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

INSTRUMENTATION_NAME = "rag_grpc"
DEFAULT_SERVICE_NAME = "rag-grpc"
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the environment asks for; empty when traces are off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    listed = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if listed:
        return [name for name in (part.strip() for part in listed.split(",")) if name and name != "none"]
    return ["otlp"] if any(environ.get(variable, "").strip() for variable in _ENDPOINT_VARIABLES) else []


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (known: otlp, console, none)")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} (grpc, http/protobuf)")


@dataclass(frozen=True)
class Tracing:
    """The tracer the server hands to its interceptor and service, and the provider to flush at exit."""

    provider: TracerProvider
    tracer: Tracer

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the OTEL_* variables configure it, or None when they ask for none (the default).
        Raises ValueError for an exporter or protocol it does not know, so a typo fails at start-up."""
        environ = os.environ if environ is None else environ
        names = _exporter_names(environ)
        if not names:
            return None
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (from os.environ).
        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        # Without a sampler argument the provider reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
        provider = TracerProvider(resource=resource)
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
        log.info("tracing_enabled", exporters=names, service=resource.attributes.get(SERVICE_NAME))
        return cls.of(provider)

    @classmethod
    def of(cls, provider: TracerProvider) -> Tracing:
        return cls(provider, provider.get_tracer(INSTRUMENTATION_NAME, __version__))

    def shutdown(self) -> None:
        """Exports what is still buffered, then stops the exporters."""
        self.provider.shutdown()
