"""OpenTelemetry tracing: on only when an OTLP endpoint is configured (OTEL_* variables).

The server interceptors make a span for every call (health checks and the xDS stream
excepted) and the client interceptor carries W3C trace context from call to call; `annotate` adds attributes to the
current call's span and `past_span` records a span after the fact (a queue wait, a batch),
both no-ops when tracing is off."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import grpc
from opentelemetry import propagate, trace
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer("infermesh")
# Not traced: health checks (Envoy and Consul ask every few seconds) and the xDS stream
# (one call as long as Envoy runs).
UNTRACED_SERVICES = ("grpc.health.v1.", "envoy.service.discovery.")


def otlp_endpoint(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """The OTLP/gRPC collector spans go to (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    OTEL_EXPORTER_OTLP_ENDPOINT), as host and port; None when tracing is off. The services
    and Envoy's tracer (gateway/envoy_config/) read the same variables through this."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not url:
        return None
    parsed = urlsplit(url if "//" in url else f"//{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or 4317


def tracing_enabled() -> bool:
    return otlp_endpoint() is not None


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
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    untraced = filters.any_of(*(filters.service_prefix(prefix) for prefix in UNTRACED_SERVICES))
    return [aio_server_interceptor(filter_=filters.negate(untraced))]


class _CarryTraceContext(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Carries the caller's trace context (W3C traceparent) on an outgoing call, so the
    callee's spans join the trace. Not OpenTelemetry's aio client interceptors: theirs
    await a unary call's status inside the interceptor, where cancelling the caller ends
    the wait but not the call (a cancelled batch went on generating for nobody). The
    callee's server span and Envoy's mesh span already time the call."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_with_trace_context(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_with_trace_context(client_call_details), request)


def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return details
    return details._replace(metadata=grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items()))


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that propagate W3C trace context on outgoing calls, when tracing is on."""
    if not tracing_enabled():
        return []
    return [_CarryTraceContext()]


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set attributes on the current call's span (unset values are skipped)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None and v != ""})


def past_span(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, AttributeValue] | None = None) -> None:
    """Record a span that already happened, as a child of the current one (times from
    time.time_ns())."""
    if not trace.get_current_span().is_recording():
        return
    span = _tracer.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=max(end_ns, start_ns))
