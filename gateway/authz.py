"""Envoy's external authorization service (envoy.service.auth.v3.Authorization): every
request through the front door, REST and gRPC alike, is checked here before it reaches a
service.

Envoy calls Check after the JSON transcoder, so a REST call arrives under its gRPC path
(`POST /v1/registry/models` as `/infermesh.registry.v1.RegistryService/CreateModel`) and
one policy, by gRPC method, covers both. Credentials are an API key (`Authorization:
Bearer imk_…` or `x-api-key`), checked against the registry with a short cache (a revoked
key stops working within `cache_seconds`), or an OIDC JWT (`Authorization: Bearer
<jwt>`), checked by a verifier (gateway/oidc.py). On success the request goes on with
headers naming the caller — `x-infermesh-principal`, `x-infermesh-role`,
`x-infermesh-models` (the models it may use, `*` for any) — which replace anything the
client sent under those names; the router enforces the model list. A refusal is
google.rpc.Status JSON, or OpenAI's error shape on the OpenAI-compatible paths.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as authz_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from prometheus_client import Counter

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.runtime.identity import ADMIN, HEADERS, USER, Caller
from services.runtime.openai_errors import SHAPED_METADATA_KEY, is_openai_rest_call, openai_error

DECISIONS = Counter(
    "infermesh_authz_decisions_total", "Authorization decisions, by outcome and role.", ["outcome", "role"]
)
IDENTITY_HEADERS = HEADERS

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


def unauthenticated(message: str) -> Denied:
    return Denied(401, code_pb2.UNAUTHENTICATED, message)


ROLE_NAMES = {res.ApiKey.ROLE_USER: USER, res.ApiKey.ROLE_ADMIN: ADMIN}


@dataclass
class ApiKeys:
    """Checks key secrets with the registry, caching answers for `cache_seconds` (both
    ways: a flood of bad keys costs the registry one call per key and period)."""

    authenticate: Callable[[str], Awaitable[res.ApiKey]]  # the registry's AuthenticateApiKey
    cache_seconds: float = 1.0
    _cache: dict[str, tuple[float, Principal | Denied]] = field(default_factory=dict)

    async def principal(self, secret: str) -> Principal:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[0] < now:
            cached = (now + self.cache_seconds, await self._ask(secret))
            self._cache[digest] = cached
            if len(self._cache) > 100_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
        if isinstance(cached[1], Denied):
            raise cached[1]
        return cached[1]

    async def _ask(self, secret: str) -> Principal | Denied:
        try:
            key = await self.authenticate(secret)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return unauthenticated(error.details() or "the API key is not valid")
            raise  # the registry is unreachable: not the caller's fault, and not cached
        return Principal(key.name, frozenset(ROLE_NAMES[r] for r in key.roles), tuple(key.models))


def jwt_checker(verifier) -> Callable[[str], Awaitable[Principal]]:
    """An OIDC verifier (gateway/oidc.py) as the authorizer's token check: its refusals
    become 401 with the verifier's reason (never the token); keys that cannot be fetched
    at all, 503."""
    from gateway.oidc import InvalidToken, JwksUnavailable

    async def check(token: str) -> Principal:
        try:
            found = await verifier.verify(token)
        except JwksUnavailable as exc:
            raise Denied(503, code_pb2.UNAVAILABLE, f"the token cannot be checked now: {exc.reason}") from None
        except InvalidToken as exc:
            raise unauthenticated(f"the bearer token is not valid: {exc.reason}") from None
        return Principal(f"oidc:{found.subject}", frozenset(found.roles), tuple(sorted(found.models or ())))

    return check


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

    async def decide(self, path: str, headers: dict[str, str]) -> Principal | None:
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

    async def _authenticate(self, headers: dict[str, str]) -> Principal:
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


class AuthorizationServicer(authz_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(self, request, context):
        http = request.attributes.request.http
        headers = {k.lower(): v for k, v in http.headers.items()}
        try:
            principal = await self._authorizer.decide(http.path, headers)
        except Denied as denied:
            DECISIONS.labels("denied", str(denied.http_status)).inc()
            return _denied(denied, openai=is_openai_rest_call(http.path, headers))
        DECISIONS.labels("allowed", ",".join(sorted(principal.roles)) if principal else "public").inc()
        return _allowed(principal)


def _allowed(principal: Principal | None) -> authz_pb.CheckResponse:
    identity = {}
    if principal is not None:
        role = ADMIN if ADMIN in principal.roles else USER
        identity = Caller(principal.subject, role, frozenset(principal.models) or None).headers()
    return authz_pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=authz_pb.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, value=v),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                for k, v in identity.items()
            ],
            # A client cannot claim an identity: what it sent under these names goes.
            headers_to_remove=[h for h in IDENTITY_HEADERS if h not in identity],
        ),
    )


def _denied(denied: Denied, openai: bool = False) -> authz_pb.CheckResponse:
    """The refusal Envoy answers with: google.rpc.Status JSON, or on the OpenAI paths
    OpenAI's error shape, marked in the filter's dynamic metadata so that the front
    door's local reply mappers leave it as it is."""
    status = status_pb2.Status(code=denied.code, message=denied.message)
    body = json.dumps(
        openai_error(status)[1] if openai else {"code": denied.code, "message": denied.message, "details": []}
    )
    shaped = struct_pb2.Struct()
    if openai:
        shaped.update({SHAPED_METADATA_KEY: True})
    return authz_pb.CheckResponse(
        dynamic_metadata=shaped,
        status=status,
        denied_response=authz_pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=denied.http_status),
            headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", value="application/json"))
            ]
            + (
                [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="www-authenticate", value="Bearer"))]
                if denied.http_status == 401
                else []
            ),
            body=body,
        ),
    )
