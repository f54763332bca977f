"""OIDC bearer tokens, as a client of the gateway meets them: tokens signed by the IdP's keys
(served from a file and from a real local HTTP server that counts its requests) become a
principal with roles and models; expired, foreign, forged and algorithm-confusion tokens are
refused with a short reason that never echoes the token; key rotation is picked up by one
refetch, a flood of unknown kids does not hammer the IdP, and an IdP outage leaves cached
keys working."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.authz.oidc import InvalidToken, JwksUnavailable, OidcConfig, OidcVerifier
from support.ports import free_port

ISSUER = "https://idp.example.test/realms/infermesh"
AUDIENCE = "infermesh"


class Clock:
    """The JWKS cache's monotonic clock, moved by the test (token times stay real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SigningKey:
    def __init__(self, kid: str, private_key: Any, alg: str) -> None:
        self.kid, self.private_key, self.alg = kid, private_key, alg

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm
        jwk = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk for k in keys]}


class JwksServer:
    """A JWKS endpoint on a real socket: serves `document`, counts requests, can be 'down'."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests += 1
                status, body = (503, b"{}") if server.down else (200, json.dumps(server.document).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/protocol/openid-connect/certs"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def rsa1() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="module")
def ec1() -> SigningKey:
    return ec_key("ec-1")


@pytest.fixture
def idp(rsa1: SigningKey, ec1: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(jwks(rsa1, ec1))
    yield server
    server.close()


def config(jwks_uri: str, **overrides: Any) -> OidcConfig:
    return OidcConfig(**{"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": jwks_uri, **overrides})


async def rejected(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value) and token not in caught.value.reason
    return caught.value.reason


async def test_a_valid_token_from_a_jwks_file_becomes_a_principal_with_roles_and_models(tmp_path: Path, rsa1, ec1):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa1, ec1)))
    token = rsa1.sign(roles=["admin", "some-other-app-role"], infermesh_models=["gemma-3-270m", "minilm"])
    async with OidcVerifier(config(str(path))) as verifier:
        principal = await verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.roles == {"admin"}
    assert principal.models == {"gemma-3-270m", "minilm"}
    assert principal.source == "oidc"
    assert abs(principal.expires_at.timestamp() - (time.time() + 300)) < 5


async def test_an_ec_token_over_http_maps_infermesh_scopes_to_roles(idp: JwksServer, ec1):
    async with OidcVerifier(config(idp.url, audience=["other-api", AUDIENCE])) as verifier:
        principal = await verifier.verify(ec1.sign(scope="openid profile infermesh:user"))
        assert principal.roles == {"user"}
        assert principal.models is None  # no claim: the token does not restrict models
    # A nested roles claim (Keycloak's realm_access.roles) works when configured.
    async with OidcVerifier(config(idp.url, roles_claim="realm_access.roles")) as verifier:
        principal = await verifier.verify(ec1.sign(realm_access={"roles": ["user", "offline_access"]}))
        assert principal.roles == {"user"}


async def test_a_token_without_an_infermesh_role_gets_no_role(idp: JwksServer, rsa1):
    async with OidcVerifier(config(idp.url)) as verifier:
        principal = await verifier.verify(rsa1.sign(roles=["viewer"], scope="openid email"))
    assert principal.roles == frozenset()


async def test_expiry_is_enforced_beyond_the_leeway_and_forgiven_within_it(idp: JwksServer, rsa1):
    now = int(time.time())
    async with OidcVerifier(config(idp.url)) as verifier:
        assert await rejected(verifier, rsa1.sign(iat=now - 600, exp=now - 120)) == "token expired"
        assert (await verifier.verify(rsa1.sign(iat=now - 600, exp=now - 30))).subject == "alice"
        assert await rejected(verifier, rsa1.sign(nbf=now + 600)) == "token not yet valid"
        assert await rejected(verifier, rsa1.sign(exp=None)) == "missing claim: exp"


async def test_tokens_for_another_issuer_or_audience_are_refused(idp: JwksServer, rsa1):
    async with OidcVerifier(config(idp.url)) as verifier:
        assert await rejected(verifier, rsa1.sign(iss="https://evil.example.test")) == "wrong issuer"
        assert await rejected(verifier, rsa1.sign(aud="another-service")) == "wrong audience"
        assert await rejected(verifier, rsa1.sign(aud=None)) == "missing claim: aud"


async def test_a_token_signed_by_another_key_with_the_same_kid_has_a_bad_signature(idp: JwksServer):
    impostor = rsa_key("rsa-1")
    async with OidcVerifier(config(idp.url)) as verifier:
        assert await rejected(verifier, impostor.sign(roles=["admin"])) == "bad signature"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_alg_none_and_hs256_signed_with_the_public_key_are_refused(idp: JwksServer, rsa1):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "roles": ["admin"], "exp": now + 300}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})
    public_pem = rsa1.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC with a PEM key, so forge the token by hand, as an attacker would.
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(claims).encode())}"
    )
    forged = f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
    async with OidcVerifier(config(idp.url)) as verifier:
        assert await rejected(verifier, unsigned) == "algorithm not allowed"
        assert await rejected(verifier, forged) == "algorithm not allowed"
        # An allowed algorithm that does not fit the key the kid names (RSA key, ES256 header).
        assert await rejected(verifier, ec_key("rsa-1").sign()) == "algorithm not allowed"
        assert await rejected(verifier, "not-a-jwt") == "malformed token"
        assert await rejected(verifier, "eyJhbGciOiJSUzI1NiJ9.@@@.###") == "malformed token"
    with pytest.raises(ValueError, match="not allowed"):
        config(idp.url, algorithms=["RS256", "HS256"])


async def test_an_unknown_kid_refetches_once_and_finds_the_rotated_key(idp: JwksServer, rsa1, ec1):
    rotated = rsa_key("rsa-2")
    async with OidcVerifier(config(idp.url)) as verifier:
        await verifier.verify(rsa1.sign())
        assert idp.requests == 1
        await verifier.verify(ec1.sign())
        assert idp.requests == 1  # cached
        idp.document = jwks(rsa1, ec1, rotated)
        principal = await verifier.verify(rotated.sign(sub="bob"))
        assert principal.subject == "bob"
        assert idp.requests == 2
        await verifier.verify(rotated.sign())
        assert idp.requests == 2


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_window(idp: JwksServer, rsa1):
    clock = Clock()
    async with OidcVerifier(config(idp.url, jwks_refresh_interval_s=30), clock=clock) as verifier:
        await verifier.verify(rsa1.sign())
        before = idp.requests
        strangers = [rsa_key(f"made-up-{i}") for i in range(3)]
        tokens = [strangers[i % 3].sign(headers={"kid": f"made-up-{i}"}) for i in range(50)]
        results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, InvalidToken) and r.reason == "unknown signing key" for r in results)
        assert idp.requests - before == 1
        clock.now += 10
        assert await rejected(verifier, tokens[0]) == "unknown signing key"
        assert idp.requests - before == 1  # still inside the window
        clock.now += 25
        assert await rejected(verifier, tokens[0]) == "unknown signing key"
        assert idp.requests - before == 2  # a new window allows one more
        # The known key keeps working throughout, with no fetch of its own.
        await verifier.verify(rsa1.sign())
        assert idp.requests - before == 2


async def test_the_jwks_is_refetched_when_its_ttl_ends(idp: JwksServer, rsa1):
    clock = Clock()
    async with OidcVerifier(config(idp.url, jwks_ttl_s=300), clock=clock) as verifier:
        await verifier.verify(rsa1.sign())
        clock.now += 299
        await verifier.verify(rsa1.sign())
        assert idp.requests == 1
        clock.now += 2
        await verifier.verify(rsa1.sign())
        assert idp.requests == 2


async def test_an_unreachable_jwks_is_a_clear_error_and_cached_keys_survive_an_outage(idp: JwksServer, rsa1):
    async with OidcVerifier(config(f"http://127.0.0.1:{free_port()}/jwks", jwks_timeout_s=2)) as verifier:
        with pytest.raises(JwksUnavailable) as caught:
            await verifier.verify(rsa1.sign())
        assert caught.value.reason == "signing keys unavailable"

    clock = Clock()
    async with OidcVerifier(config(idp.url, jwks_ttl_s=300), clock=clock) as verifier:
        await verifier.verify(rsa1.sign())
        idp.down = True
        clock.now += 400  # the cache has expired: the refetch fails, the old keys stay
        assert (await verifier.verify(rsa1.sign(sub="carol"))).subject == "carol"
        assert idp.requests == 2
        for _ in range(20):  # while the IdP is down it is not asked again on every request
            await verifier.verify(rsa1.sign())
        assert idp.requests == 2
        assert await rejected(verifier, rsa_key("new").sign()) == "unknown signing key"
        idp.down = False
        clock.now += 10
        await verifier.verify(rsa1.sign())
        assert idp.requests == 3
