"""The gateway's settings, from the environment."""

from __future__ import annotations

from pydantic import Field

from services.authz.settings import AuthSettings
from services.limits.config import RateLimitSettings
from services.runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings, RateLimitSettings, AuthSettings):
    max_requests_per_backend: int = Field(
        256, ge=1, description="Envoy's circuit breaker: requests in flight to one backend cluster; more get 503."
    )
    max_pending_per_backend: int = Field(
        256, ge=1, description="Envoy's circuit breaker: requests waiting for a connection to one backend cluster."
    )
