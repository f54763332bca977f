"""An issuer's signing keys (its JWKS), and the errors of a token that cannot be checked.

Keys come from a JWKS file or URL, cached for `jwks_ttl_s`; a token whose `kid` is
unknown refetches the set at once (key rotation), at most once per
`jwks_refresh_interval_s`, so a flood of made-up kids cannot hammer the IdP. When the IdP
is down, the keys already fetched keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

if TYPE_CHECKING:
    from services.authz.oidc import OidcConfig

log = logging.getLogger(__name__)


class InvalidToken(Exception):
    """The token was not accepted; `reason` is short and safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(InvalidToken):
    """No signing keys could be loaded (IdP or file unreachable): the caller may answer
    503 rather than 401."""

    def __init__(self) -> None:
        super().__init__("signing keys unavailable")


@dataclass(frozen=True)
class SigningKey:
    public_key: Any
    alg: str | None  # the JWK's own "alg", when it names one


class JwksCache:
    """Signing keys by kid from a JWKS file or URL, with a TTL, a rate-limited refetch for
    unknown kids, and stale keys kept while the source is down."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._http = http_client
        self._own_http = http_client is None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._forced_at: float | None = None  # last refetch for an unknown kid
        self._failed_at: float | None = None  # last failed fetch, cleared on success
        self._lock = asyncio.Lock()
        self.fetches = 0  # fetch attempts, for tests and metrics

    async def aclose(self) -> None:
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    async def get(self, kid: str | None) -> SigningKey:
        now = self._clock()
        if self._expired(now):
            async with self._lock:
                if self._expired(self._clock()) and self._may_fetch():
                    await self._refresh()
        if not self._keys:
            raise JwksUnavailable()
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._lookup(kid)  # another request may have refreshed meanwhile
            if key is None and kid is not None and self._may_fetch(forced=True):
                self._forced_at = self._clock()
                await self._refresh()
                key = self._lookup(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        return key

    def _expired(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._config.jwks_ttl_s

    def _may_fetch(self, forced: bool = False) -> bool:
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < self._config.jwks_retry_after_failure_s:
            return False
        return not (
            forced and self._forced_at is not None and now - self._forced_at < self._config.jwks_refresh_interval_s
        )

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            # A token without kid is accepted only when the set leaves no doubt.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """Fetch the set; on failure keep the keys we have (logged, never raised)."""
        self.fetches += 1
        try:
            document = await self._fetch()
            keys = _parse_jwks(document)
        except Exception as exc:  # any failure leaves the old keys in place
            self._failed_at = self._clock()
            log.warning(
                "JWKS fetch from %s failed (%s); keeping %d cached keys", self._config.jwks_uri, exc, len(self._keys)
            )
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._failed_at = None

    async def _fetch(self) -> Any:
        uri = self._config.jwks_uri
        if uri.startswith(("http://", "https://")):
            if self._http is None:
                self._http = httpx.AsyncClient(timeout=self._config.jwks_timeout_s, follow_redirects=False)
            response = await self._http.get(uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.json()
        path = Path(uri.removeprefix("file://"))
        return json.loads(await asyncio.to_thread(path.read_bytes))


def _parse_jwks(document: Any) -> dict[str, SigningKey]:
    """Usable signature keys by kid; symmetric, encryption and unparsable keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str, SigningKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            continue
        public_key = parsed.key
        if not isinstance(
            public_key,
            rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
        ):
            public_key = public_key.public_key()  # a private JWK published by mistake: use its public half
        alg = jwk.get("alg")
        keys[str(jwk.get("kid", ""))] = SigningKey(public_key, alg if isinstance(alg, str) else None)
    if not keys:
        raise ValueError("JWK set has no usable signature keys")
    return keys
