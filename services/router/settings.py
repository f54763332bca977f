"""Router settings, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.authz.settings import AuthSettings
from services.limits.config import RateLimitSettings
from services.runtime.settings import ServiceSettings


class RouterSettings(ServiceSettings, RateLimitSettings, AuthSettings):
    authorize_calls: bool = Field(
        False,
        description="Check the credentials of the calls the front door passes on (its routes to the router skip "
        "Envoy's ext_authz, so the router checks them, with the gateway's policy and AUTH_*/OIDC_* settings); "
        "make run sets it when authorization is on.",
    )
    mesh_address: str = Field(
        "127.0.0.1:15001", description="Envoy's service-to-service listener; every backend call goes through it."
    )
    backend_timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline for a backend call when the caller set none."
    )
    embed_coalesce_in_flight: int = Field(
        2,
        ge=0,
        description="Embedding calls outstanding per model and replica before further requests wait and leave "
        "together as one call (no added latency below that; 2 matches an inference server's two embedding "
        "instances on CPU); 0 sends every request alone.",
    )
    registry_timeout_seconds: float = Field(
        60.0, gt=0, description="How long start-up waits for the registry's models before giving up."
    )
    cooldown_failures: int = Field(
        3, ge=0, description="Consecutive failures after which a backend is avoided for a while; 0 never."
    )
    cooldown_seconds: float = Field(10.0, ge=0, description="How long a failing backend is avoided.")
    cache_max_entries: int = Field(
        4096, ge=0, description="Answers kept for repeated deterministic requests (LRU); 0 turns the cache off."
    )
    cache_ttl_seconds: float = Field(300.0, gt=0, description="How long a cached answer is served.")
    cache_redis_url: str = Field(
        "", description="Keep cached answers in Redis (shared by router replicas), e.g. redis://127.0.0.1:6379/0."
    )
    fallback_after_seconds: float = Field(
        60.0,
        gt=0,
        description="A backend that has not answered (or, streaming, sent its first chunk) within this long is "
        "abandoned for the next fallback, when there is one; the last candidate gets the caller's whole deadline.",
    )
    retry_budget_tokens: float = Field(
        10.0,
        ge=0,
        description="Retry budget (gRPC retry throttling): a fallback after a failed backend call spends one "
        "token, fallbacks stop while half or fewer are left; 0 never falls back after a failed call.",
    )
    retry_budget_token_ratio: float = Field(
        0.1, ge=0, description="Tokens an answered request returns to the retry budget."
    )
    usage_retention_hours: float = Field(
        24.0, gt=0, description="How long per-minute usage is kept for the usage API (in memory, per replica)."
    )
