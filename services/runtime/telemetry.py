"""OpenTelemetry tracing: on only when an OTLP endpoint is configured (OTEL_* variables)."""

from __future__ import annotations

import os

import grpc
from opentelemetry import trace


def tracing_enabled() -> bool:
    return (
        bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


def configure_tracing(service: str) -> trace.TracerProvider | None:
    """Install a batching OTLP exporter as the global tracer provider, or do nothing."""
    if not tracing_enabled():
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The OpenTelemetry server interceptor, which must come first, when tracing is on."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that propagate W3C trace context on outgoing calls, when tracing is on."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())
