"""Who may call what through the front door: the policy by gRPC method, applied to the
caller the credentials name.

Envoy calls Check after the JSON transcoder, so a REST call arrives under its gRPC path
(`POST /v1/registry/models` as `/infermesh.registry.v1.RegistryService/CreateModel`) and
one policy, by gRPC method, covers both. Credentials are an API key (`Authorization:
Bearer imk_…` or `x-api-key`), checked against the registry (api_keys.py), or an OIDC
JWT (`Authorization: Bearer <jwt>`), checked by a verifier (oidc.py). Health checks and
reflection are public unless configured otherwise; a few methods are for the mesh's own
services only and refused here whoever asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.rpc import code_pb2, status_pb2

from services.runtime.identity import ADMIN, USER

if TYPE_CHECKING:
    from services.authz.api_keys import ApiKeys

# Methods only an admin may call; every other infermesh method needs a user (or admin).
ADMIN_METHODS = {
    "/infermesh.registry.v1.RegistryService/" + m
    for m in (
        "CreateModel UpdateModel DeleteModel CreateModelVersion UpdateModelVersion DeleteModelVersion "
        "CreateDeployment UpdateDeployment DeleteDeployment ImportModelVersion "
        "CreateApiKey GetApiKey ListApiKeys RevokeApiKey ListAuditEvents"
    ).split()
} | {
    "/infermesh.inference.v1.ModelService/LoadModel",
    "/infermesh.inference.v1.ModelService/UnloadModel",
    "/infermesh.inference.v1.ModelService/GetServerResources",  # the host's figures: operators
    "/google.longrunning.Operations/CancelOperation",
    "/google.longrunning.Operations/DeleteOperation",
}
# Inside the mesh only: never through the front door, whoever asks.
INTERNAL_METHODS = {
    "/infermesh.registry.v1.RegistryService/AuthenticateApiKey",
    "/infermesh.registry.v1.RegistryService/RecordAuditEvent",
}
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True)
class Principal:
    subject: str  # `apiKeys/{id}` or the token's subject
    roles: frozenset[str]
    models: tuple[str, ...] = ()  # empty: every model


class Denied(Exception):
    def __init__(self, http_status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http_status, self.code, self.message = http_status, code, message

    def status(self) -> status_pb2.Status:
        """As google.rpc.Status: the code and message, no details (what REST callers read)."""
        return status_pb2.Status(code=self.code, message=self.message)

    @property
    def headers(self) -> dict[str, str]:
        """Response headers that go with the refusal: a 401 says how to authenticate."""
        return {"www-authenticate": "Bearer"} if self.http_status == 401 else {}


def unauthenticated(message: str) -> Denied:
    return Denied(401, code_pb2.UNAUTHENTICATED, message)


class Authorizer:
    def __init__(
        self,
        api_keys: ApiKeys,
        verify_jwt: Callable[[str], Awaitable[Principal]] | None = None,
        public_health: bool = True,
        public_reflection: bool = True,
    ) -> None:
        self._keys = api_keys
        self._verify_jwt = verify_jwt
        self._public = tuple(
            p for p, on in ((HEALTH_PREFIX, public_health), (REFLECTION_PREFIX, public_reflection)) if on
        )

    async def decide(self, path: str, headers: Mapping[str, str]) -> Principal | None:
        """The caller, or None for a public method; raises Denied."""
        method = path.split("?", 1)[0]
        if method in INTERNAL_METHODS:
            raise Denied(403, code_pb2.PERMISSION_DENIED, f"{method} is not served through the front door")
        if method.startswith(self._public):
            return None
        principal = await self._authenticate(headers)
        needed = ADMIN if method in ADMIN_METHODS else USER
        if needed not in principal.roles and ADMIN not in principal.roles:
            raise Denied(
                403,
                code_pb2.PERMISSION_DENIED,
                f"{method} needs the {needed} role; {principal.subject} has "
                f"{', '.join(sorted(principal.roles)) or 'none'}",
            )
        return principal

    async def _authenticate(self, headers: Mapping[str, str]) -> Principal:
        token = headers.get("x-api-key", "")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if not token and scheme.lower() == "bearer":
            token = value.strip()
        if not token:
            raise unauthenticated("credentials are required: send Authorization: Bearer <API key or token>")
        if token.startswith("imk_"):
            return await self._keys.principal(token)
        if self._verify_jwt is None:
            raise unauthenticated("the credentials are not an API key, and no OIDC issuer is configured")
        return await self._verify_jwt(token)
