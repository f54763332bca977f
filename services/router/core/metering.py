"""Measuring every request: tokens, cost at the registry's prices, latency, time to
first token, errors, fallbacks and cache hits, per model and version.

Each measurement goes two ways: to Prometheus, under the OpenTelemetry GenAI semantic
conventions' names (gen_ai.client.token.usage, gen_ai.server.request.duration,
gen_ai.server.time_to_first_token, gen_ai.server.time_per_output_token, with dots as
underscores and the unit as suffix) plus the mesh's own counters; and to the usage
ledger the usage API reads. Streamed answers are metered from the usage on their last
chunk, so they count as fully as unary ones.
"""

from __future__ import annotations

import time

from google.protobuf.message import Message
from google.rpc import code_pb2
from prometheus_client import Counter, Histogram

from infermesh.inference.v1 import inference_types_pb2 as types_pb
from services.router.core.resolvers import Route, model_id
from services.router.core.usage import UsageLedger
from services.runtime.errors import status_of
from services.runtime.telemetry import annotate

TOKENS = Counter(
    "infermesh_router_tokens_total",
    "Tokens in answered requests, by model, version and direction (input, output).",
    ["model", "version", "direction"],
)
AUDIO_SECONDS = Counter(
    "infermesh_router_audio_seconds_total",
    "Seconds of audio in answered requests, by model, version and direction (input: heard, output: spoken).",
    ["model", "version", "direction"],
)
IMAGES = Counter(
    "infermesh_router_images_total",
    "Images looked at in answered requests (OCR, classification), by model and version.",
    ["model", "version"],
)
CHARACTERS = Counter(
    "infermesh_router_characters_total",
    "Characters of text spoken in answered speech requests, by model and version.",
    ["model", "version"],
)
COST = Counter(
    "infermesh_router_cost_total",
    "What answered requests cost at the registry's prices, by model and currency.",
    ["model", "currency"],
)
REQUESTS = Counter(
    "infermesh_router_model_requests_total",
    "Requests by the model asked for and outcome (answered, fallback, cache_hit, error).",
    ["model", "outcome"],
)
# OpenTelemetry GenAI semantic conventions (gen_ai.* metrics); buckets as they advise.
GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model"]
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per request (gen_ai.client.token.usage), by token type.",
    [*GENAI, "gen_ai_token_type"],
    buckets=[4**i for i in range(14)],
)
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Time to the whole answer (gen_ai.server.request.duration); error_type set on failures.",
    [*GENAI, "error_type"],
    buckets=DURATION_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time to the first chunk of a streamed answer (gen_ai.server.time_to_first_token).",
    GENAI,
    buckets=[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token after the first, in streamed answers (gen_ai.server.time_per_output_token).",
    GENAI,
    buckets=[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
)
OPERATION = {
    "GenerateText": "text_completion",
    "Chat": "chat",
    "Embed": "embeddings",
    "DescribeImage": "generate_content",
    "Transcribe": "transcription",  # no GenAI convention names these two yet
    "Synthesize": "speech_synthesis",
    "ExtractText": "ocr",
    "ClassifyImage": "image_classification",
}


def cost_of(route: Route, usage: types_pb.Usage) -> float:
    if route.pricing is None:
        return 0.0
    return (
        usage.input_tokens * route.pricing.input_per_1k_tokens
        + usage.output_tokens * route.pricing.output_per_1k_tokens
    ) / 1000


class Metering:
    def __init__(self, retention_seconds: float = 86400.0) -> None:
        self.ledger = UsageLedger(retention_seconds)

    def start(self, rpc: str, requested: str) -> RequestRecord:
        return RequestRecord(self.ledger, OPERATION[rpc], requested)


class RequestRecord:
    """One request's measurements, written when it finishes."""

    def __init__(self, ledger: UsageLedger, operation: str, requested: str) -> None:
        self._ledger = ledger
        self._operation = operation
        self._requested = model_id(requested)
        self._started = time.monotonic()
        self._route: Route | None = None
        self._fallback = False
        self._cached = False
        self._first_token: float | None = None
        self._output_tokens = 0
        self._error: str | None = None
        # The call's span, under the GenAI semantic conventions (no prompts, no outputs).
        annotate({"gen_ai.operation.name": operation, "gen_ai.request.model": requested})

    def answered(self, route: Route, fallback: bool, cached: bool) -> None:
        self._route, self._fallback, self._cached = route, fallback, cached
        annotate(
            {
                "gen_ai.response.model": route.model,
                "gen_ai.provider.name": route.provider or "local",
                "infermesh.model.version": route.version,
                "infermesh.backend": route.backend,
                "infermesh.fallback": fallback,
                "infermesh.cache": "hit" if cached else "miss",
            }
        )

    def first_chunk(self) -> None:
        self._first_token = time.monotonic() - self._started

    def usage(self, route: Route, usage: types_pb.Usage, reply: Message | None = None) -> None:
        """Tokens an answer used (not called for cache hits: they cost nothing), and what
        else `reply` (the answer, or a stream's last piece) measures: audio heard or made,
        characters spoken, images looked at."""
        cost = cost_of(route, usage)
        TOKENS.labels(route.model, route.version, "input").inc(usage.input_tokens)
        TOKENS.labels(route.model, route.version, "output").inc(usage.output_tokens)
        self._media(route, reply)
        for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            TOKEN_USAGE.labels(*self._labels(route), kind).observe(count)
        if route.pricing is not None:
            COST.labels(route.model, route.pricing.currency or "USD").inc(cost)
        tally = self._ledger.tally(route.model, route.version)
        tally.answered += 1
        tally.input_tokens += usage.input_tokens
        tally.output_tokens += usage.output_tokens
        tally.cost += cost
        tally.currency = tally.currency or (route.pricing.currency or "USD" if route.pricing is not None else "")
        self._output_tokens = usage.output_tokens
        annotate({"gen_ai.usage.input_tokens": usage.input_tokens, "gen_ai.usage.output_tokens": usage.output_tokens})

    def _media(self, route: Route, reply: Message | None) -> None:
        if reply is None:
            return
        if self._operation == "transcription":
            AUDIO_SECONDS.labels(route.model, route.version, "input").inc(reply.duration_seconds)
        elif self._operation == "speech_synthesis":
            AUDIO_SECONDS.labels(route.model, route.version, "output").inc(reply.duration_seconds)
            CHARACTERS.labels(route.model, route.version).inc(reply.input_characters)
        elif self._operation in ("ocr", "image_classification"):
            IMAGES.labels(route.model, route.version).inc()

    def failed(self, error: BaseException) -> None:
        self._error = _error_type(error)
        self._route = None
        annotate({"error.type": self._error})

    def finish(self) -> None:
        elapsed = time.monotonic() - self._started
        route = self._route
        if route is None and self._error is None:
            self._error = "CANCELLED"  # the caller left before an answer
        # The requested model's tally: under the answering version when it answered,
        # under "" when it failed or a fallback answered.
        answered_itself = route is not None and not self._fallback and route.model == self._requested
        tally = self._ledger.tally(self._requested, route.version if answered_itself else "")
        tally.requests += 1
        if self._error is not None or route is None:
            outcome = "error"
            tally.errors += 1
        else:
            outcome = "cache_hit" if self._cached else "fallback" if self._fallback else "answered"
            tally.fallbacks += self._fallback
            tally.cache_hits += self._cached
            tally.latency.add(elapsed)
            if self._first_token is not None:
                tally.first_token.add(self._first_token)
        REQUESTS.labels(self._requested, outcome).inc()
        response_model = route.model if route is not None else ""
        provider = (route.provider or "local") if route is not None else ""
        REQUEST_DURATION.labels(self._operation, provider, self._requested, response_model, self._error or "").observe(
            elapsed
        )
        if route is not None and self._first_token is not None:
            TIME_TO_FIRST_TOKEN.labels(*self._labels(route)).observe(self._first_token)
            if self._output_tokens > 1:
                per_token = (elapsed - self._first_token) / (self._output_tokens - 1)
                TIME_PER_OUTPUT_TOKEN.labels(*self._labels(route)).observe(per_token)

    def _labels(self, route: Route) -> tuple[str, str, str, str]:
        return (self._operation, route.provider or "local", self._requested, route.model)


def _error_type(error: BaseException) -> str:
    """The canonical status code's name (error.type in the GenAI conventions)."""
    return code_pb2.Code.Name(status_of(error).code)
