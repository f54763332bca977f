"""OIDC bearer tokens: verify a JWT against a configured issuer, audience and JWKS.

The ext_authz server calls `OidcVerifier.verify(token)` for a request that carries
`Authorization: Bearer <jwt>` and gets a `VerifiedToken` back, or `InvalidToken` with a
reason that is safe to show the client (it never contains the token); `jwt_checker`
turns that into the policy's Principal or refusal.

Only asymmetric algorithms are accepted: with HS256 allowed, anyone holding the IdP's
*public* key could sign tokens. Keys come from the issuer's JWKS (jwks.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from google.rpc import code_pb2

from services.authz.jwks import InvalidToken, JwksCache, JwksUnavailable
from services.authz.policy import Denied, Principal, unauthenticated

# Asymmetric algorithms only; never "none" or HS* (see the module docstring).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
DEFAULT_SCOPE_ROLES: Mapping[str, str] = {"infermesh:admin": "admin", "infermesh:user": "user"}
KNOWN_ROLES = frozenset({"admin", "user"})
MAX_TOKEN_BYTES = 16 * 1024

_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass(frozen=True)
class VerifiedToken:
    """Who a valid token names, and what it allows."""

    subject: str
    roles: frozenset[str]
    # None: the token does not restrict models; otherwise the only models it may use.
    models: frozenset[str] | None
    expires_at: datetime
    source: str = "oidc"


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str | Sequence[str]
    # An http(s) URL, or a path (or file:// URL) to a JWKS JSON file.
    jwks_uri: str
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    leeway_s: float = 60.0
    jwks_ttl_s: float = 300.0
    # At most one refetch per this many seconds for an unknown kid.
    jwks_refresh_interval_s: float = 30.0
    # After a failed fetch, no new attempt for this long (the IdP is not hammered while down).
    jwks_retry_after_failure_s: float = 5.0
    jwks_timeout_s: float = 5.0
    # A claim name, or a dotted path into nested objects (Keycloak: "realm_access.roles").
    roles_claim: str = "roles"
    scope_roles: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SCOPE_ROLES))
    models_claim: str = "infermesh_models"

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("OIDC issuer must be set")
        audiences = [self.audience] if isinstance(self.audience, str) else list(self.audience)
        if not audiences or not all(audiences):
            raise ValueError("OIDC audience must be set")
        if not self.algorithms:
            raise ValueError("at least one signing algorithm must be allowed")
        bad = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed; choose from {sorted(SUPPORTED_ALGORITHMS)}")
        if self.leeway_s < 0 or self.jwks_ttl_s <= 0 or self.jwks_refresh_interval_s < 0:
            raise ValueError("leeway, JWKS TTL and refresh interval must not be negative (TTL > 0)")

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


def _key_fits(key: Any, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    return alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


# PyJWT's errors → reasons safe for a client, most specific first.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


class OidcVerifier:
    def __init__(
        self,
        config: OidcConfig,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._allowed = frozenset(config.algorithms)
        self.keys = JwksCache(config, http_client=http_client, clock=clock)

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def __aenter__(self) -> OidcVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def verify(self, token: str) -> VerifiedToken:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        key = await self.keys.get(kid)
        if (key.alg is not None and key.alg != alg) or not _key_fits(key.public_key, alg):
            raise InvalidToken("algorithm not allowed")
        claims = self._decode(token, key.public_key, alg)
        return self._verified(claims)

    def _decode(self, token: str, public_key: Any, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                public_key,
                algorithms=[alg],
                audience=self._config.audiences,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim: {exc.claim}") from None
        except jwt.PyJWTError as exc:
            for error_type, reason in _REASONS:
                if isinstance(exc, error_type):
                    raise InvalidToken(reason) from None
            raise InvalidToken("invalid token") from None

    def _verified(self, claims: Mapping[str, Any]) -> VerifiedToken:
        if not claims["sub"]:
            raise InvalidToken("missing claim: sub")
        return VerifiedToken(
            subject=claims["sub"],
            roles=self._roles(claims),
            models=self._models(claims),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),  # PyJWT checked int(exp) works
        )

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        mapping = self._config.scope_roles
        roles: set[str] = set()
        for value in _strings(_claim(claims, self._config.roles_claim)):
            if value in KNOWN_ROLES:
                roles.add(value)
            elif value in mapping:
                roles.add(mapping[value])
        for scope in _strings(claims.get("scope")):
            if scope in mapping:
                roles.add(mapping[scope])
        return frozenset(roles)

    def _models(self, claims: Mapping[str, Any]) -> frozenset[str] | None:
        value = _claim(claims, self._config.models_claim)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise InvalidToken(f"malformed claim: {self._config.models_claim}")
        return frozenset(value)


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name (Auth0's namespaced names contain dots), else by dotted path."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    """A claim holding roles or scopes: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def jwt_checker(verifier: OidcVerifier) -> Callable[[str], Awaitable[Principal]]:
    """The verifier as the authorizer's token check: its refusals become 401 with the
    verifier's reason (never the token); keys that cannot be fetched at all, 503."""

    async def check(token: str) -> Principal:
        try:
            found = await verifier.verify(token)
        except JwksUnavailable as exc:
            raise Denied(503, code_pb2.UNAVAILABLE, f"the token cannot be checked now: {exc.reason}") from None
        except InvalidToken as exc:
            raise unauthenticated(f"the bearer token is not valid: {exc.reason}") from None
        return Principal(f"oidc:{found.subject}", frozenset(found.roles), tuple(sorted(found.models or ())))

    return check
