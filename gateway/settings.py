"""The gateway's settings, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.limits.config import RateLimitSettings
from services.runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings, RateLimitSettings):
    max_requests_per_backend: int = Field(
        256, ge=1, description="Envoy's circuit breaker: requests in flight to one backend cluster; more get 503."
    )
    max_pending_per_backend: int = Field(
        256, ge=1, description="Envoy's circuit breaker: requests waiting for a connection to one backend cluster."
    )
    auth_cache_seconds: float = Field(
        1.0, gt=0, description="How long an API key check is reused: a revoked key stops working within this."
    )
    auth_public_health: bool = Field(True, description="Health checks through the front door need no credentials.")
    auth_public_reflection: bool = Field(True, description="gRPC reflection (grpcurl list) needs no credentials.")
    oidc_issuer: str = Field("", description="Accept JWT bearer tokens from this OIDC issuer; empty: API keys only.")
    oidc_audience: str = Field("", description="The audience tokens must be for (comma-separated for several).")
    oidc_jwks: str = Field("", description="The issuer's signing keys: a JWKS URL or file.")
