"""The settings of authorization, shared by the gateway and the router (which must agree:
they apply one policy to one set of credentials), and the Authorizer they make."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.authz.api_keys import ApiKeys
from services.authz.oidc import OidcConfig, OidcVerifier, jwt_checker
from services.authz.policy import Authorizer


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    auth_cache_seconds: float = Field(
        1.0, gt=0, description="How long an API key check is reused: a revoked key stops working within this."
    )
    auth_public_health: bool = Field(True, description="Health checks through the front door need no credentials.")
    auth_public_reflection: bool = Field(True, description="gRPC reflection (grpcurl list) needs no credentials.")
    oidc_issuer: str = Field("", description="Accept JWT bearer tokens from this OIDC issuer; empty: API keys only.")
    oidc_audience: str = Field("", description="The audience tokens must be for (comma-separated for several).")
    oidc_jwks: str = Field("", description="The issuer's signing keys: a JWKS URL or file.")

    def authorizer(
        self, authenticate: Callable[[str], Awaitable[res.ApiKey]]
    ) -> tuple[Authorizer, OidcVerifier | None]:
        """The policy over these credentials: API keys checked with `authenticate` (the
        registry's AuthenticateApiKey), and OIDC tokens when an issuer is set (the
        verifier is returned too: its owner closes it)."""
        keys = ApiKeys(authenticate, self.auth_cache_seconds)
        verifier = None
        if self.oidc_issuer:
            audience = [a.strip() for a in self.oidc_audience.split(",") if a.strip()]
            verifier = OidcVerifier(OidcConfig(issuer=self.oidc_issuer, audience=audience, jwks_uri=self.oidc_jwks))
        tokens = jwt_checker(verifier) if verifier is not None else None
        return Authorizer(keys, tokens, self.auth_public_health, self.auth_public_reflection), verifier
