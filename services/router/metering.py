"""Tokens and cost per model and version, priced from the registry (per 1K tokens)."""

from __future__ import annotations

from prometheus_client import Counter

from infermesh.inference.v1 import inference_types_pb2 as types_pb
from infermesh_router.directory import Route

TOKENS = Counter(
    "infermesh_router_tokens_total",
    "Tokens in answered requests, by model, version and direction (input, output).",
    ["model", "version", "direction"],
)
COST = Counter(
    "infermesh_router_cost_total",
    "What answered requests cost at the registry's prices, by model and currency.",
    ["model", "currency"],
)


def cost_of(route: Route, usage: types_pb.Usage) -> float:
    if route.pricing is None:
        return 0.0
    return (
        usage.input_tokens * route.pricing.input_per_1k_tokens
        + usage.output_tokens * route.pricing.output_per_1k_tokens
    ) / 1000


def meter(route: Route, usage: types_pb.Usage) -> None:
    TOKENS.labels(route.model, route.version, "input").inc(usage.input_tokens)
    TOKENS.labels(route.model, route.version, "output").inc(usage.output_tokens)
    if route.pricing is not None:
        COST.labels(route.model, route.pricing.currency or "USD").inc(cost_of(route, usage))
