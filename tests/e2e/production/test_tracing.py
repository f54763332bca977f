"""One request, one trace (issue 9): with OTEL_EXPORTER_OTLP_ENDPOINT set, Envoy (both
listeners) and every service export spans to the same OTLP collector, W3C trace context
is carried across every hop, and the spans of one request share its trace id and link to
their parents: Envoy front door → router → Envoy mesh listener → inference server →
queue wait and prefill → decode. Jaeger cannot run here: the collector is an OTLP/gRPC
receiver started inside the test run (support.trace_collector), which is what Jaeger's OTLP
port implements. The mesh is this package's production mesh (conftest.py), so requests
carry its admin key and pass the gateway's authorization and rate limits on the way."""

from __future__ import annotations

import httpx
import pytest

from support.polling import eventually
from support.trace_collector import TraceCollector

from .config import GEMMA, MINILM, ProductionMesh

INFERENCE = "infermesh.inference.v1.InferenceService"
PROMPT = "The secret word is artichoke. Repeat it:"


@pytest.fixture(scope="module")
def traced(production_mesh: ProductionMesh) -> tuple[str, TraceCollector, dict[str, str]]:
    """The front door, the collector every process exports its spans to, and credentials."""
    return f"http://{production_mesh.fronts[0]}", production_mesh.traces, production_mesh.admin_key


def attributes(span) -> dict[str, object]:
    values = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        values[a.key] = getattr(a.value, kind) if kind else None
    return values


def wait_for_trace(
    receiver: TraceCollector, trace_id: bytes, services: set[str], caller_span: bytes | None = None, timeout: float = 15
) -> list:
    """The trace's spans, once every one of `services` has exported its part (and, given
    the caller's span, once every span's parent has arrived too: processes export in
    batches, so a child can come before its parent)."""

    def complete(spans: list) -> bool:
        if not services <= {service for service, _ in spans}:
            return False
        ids = {span.span_id for _, span in spans} | {caller_span}
        return caller_span is None or all(span.parent_span_id in ids for _, span in spans)

    return eventually(
        lambda: receiver.trace(trace_id),
        until=complete,
        timeout=timeout,
        interval=0.2,
        what=f"spans of {sorted(services)} in trace {trace_id.hex()}",
    )


def ancestry(span, by_id: dict[bytes, tuple[str, object]]) -> list[str]:
    """The services of a span's ancestors in the trace, nearest first."""
    chain = []
    while span.parent_span_id in by_id:
        service, span = by_id[span.parent_span_id]
        chain.append(service)
    return chain


def test_one_request_is_one_trace_from_envoy_to_the_model(traced):
    base, receiver, credentials = traced
    # The caller's own trace context is continued, not replaced.
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    caller_span = "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id.hex()}-{caller_span}-01", **credentials}
    body = {"model": GEMMA, "prompt": PROMPT, "config": {"max_tokens": 4, "temperature": 0}}
    reply = httpx.post(f"{base}/v1/generate-text", json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text

    services = {"envoy-front-door", "router", "envoy-mesh", "inference"}
    spans = wait_for_trace(receiver, trace_id, services, bytes.fromhex(caller_span))
    assert services <= {service for service, _ in spans}, sorted({s for s, _ in spans})
    by_id = {span.span_id: (service, span) for service, span in spans}
    # Every span's parent is in the trace, up to the caller's span.
    roots = [span for _, span in spans if span.parent_span_id not in by_id]
    assert {span.parent_span_id.hex() for span in roots} == {caller_span}

    names = sorted((service, span.name) for service, span in spans)
    router = next(span for service, span in spans if span.name == "/infermesh.router.v1.RouterService/GenerateText")
    assert "envoy-front-door" in ancestry(router, by_id)
    inference = next(
        span for service, span in spans if (service, span.name) == ("inference", f"/{INFERENCE}/GenerateText")
    )
    above = ancestry(inference, by_id)
    assert "router" in above and above.index("envoy-mesh") < above.index("router"), names  # router → Envoy → inference
    # A deterministic request is looked up in the response cache first.
    lookup = next(span for service, span in spans if span.name == "response cache lookup")
    assert by_id[lookup.parent_span_id][1] is router and attributes(lookup)["infermesh.cache"] == "miss"
    inside = {span.name: span for service, span in spans if service == "inference"}
    assert by_id[inside["queue wait and prefill"].parent_span_id][1] is inference
    decode = inside[f"{GEMMA} decode"]
    assert decode.start_time_unix_nano >= inside["queue wait and prefill"].end_time_unix_nano - 1

    # The router's span speaks the GenAI conventions; prompts and outputs are not recorded.
    genai = attributes(router)
    assert genai["gen_ai.operation.name"] == "text_completion" and genai["gen_ai.request.model"] == GEMMA
    assert genai["gen_ai.response.model"] == GEMMA and genai["gen_ai.provider.name"] == "local"
    assert genai["gen_ai.usage.output_tokens"] == int(reply.json()["usage"]["output_tokens"])
    assert genai["infermesh.fallback"] is False and genai["infermesh.cache"] in ("hit", "miss")
    recorded = " ".join(str(v) for _, span in spans for v in attributes(span).values())
    assert "artichoke" not in recorded


def test_embeddings_show_their_queue_wait_and_batch_and_health_checks_are_not_traced(traced):
    base, receiver, credentials = traced
    trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    headers = {"traceparent": f"00-{trace_id.hex()}-b7ad6b7169203331-01", **credentials}
    reply = httpx.post(f"{base}/v1/embed", json={"model": MINILM, "inputs": ["a", "b"]}, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    spans = wait_for_trace(receiver, trace_id, {"inference"})
    names = {span.name: span for service, span in spans if service == "inference"}
    assert "queue wait" in names and attributes(names[f"{MINILM} forward"])["infermesh.batch.size"] >= 2
    # Envoy checks every backend's health every few seconds: none of it is traced.
    assert not [name for _, name in receiver.span_names() if "grpc.health" in name or "Health/Check" in name]
