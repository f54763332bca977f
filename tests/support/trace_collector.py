"""An OpenTelemetry collector stand-in: Jaeger cannot run here, so spans go to an
OTLP/gRPC receiver in the test process (the collector's service types from
opentelemetry-proto), which is what Jaeger's OTLP port implements."""

from __future__ import annotations

import threading
from collections import OrderedDict

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

# Spans kept, the oldest traces dropped first: far more than a test mesh's run exports.
MAX_SPANS = 200_000


class TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps exported spans by trace, each with its service's name, and the name of every
    span it was sent. Serve it with support.serving, threaded (`with serving(...)`), so it
    receives while synchronous tests run. Reads never scan all spans: an exporter that
    waits on a slow collector drops what it was sending."""

    def __init__(self) -> None:
        self.port: int | None = None  # where it is served, once it is
        self._traces: OrderedDict[bytes, list[tuple[str, object]]] = OrderedDict()
        self._names: set[tuple[str, str]] = set()
        self._count = 0
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - gRPC's method name
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self._traces.setdefault(span.trace_id, []).append((service, span))
                        self._names.add((service, span.name))
                        self._count += 1
            while self._count > MAX_SPANS:
                _, dropped = self._traces.popitem(last=False)
                self._count -= len(dropped)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, object]]:
        """The spans of one trace received so far, as (service, span)."""
        with self._lock:
            return list(self._traces.get(trace_id, ()))

    def span_names(self) -> set[tuple[str, str]]:
        """(service, span name) of every span received."""
        with self._lock:
            return set(self._names)

    @property
    def registration(self) -> tuple:
        return trace_service_pb2_grpc.add_TraceServiceServicer_to_server, self


def exporting_to(port: int) -> dict[str, str]:
    """The environment that makes every process of a mesh (and its Envoys) export spans to
    a collector on `port`, within a fraction of a second of each span's end."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
