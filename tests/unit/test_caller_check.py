"""The router's check of its own calls (services/authz/callers.py), on a fake registry:
who a call's headers say is calling, what is refused with which status, and the caller's
requests per minute counted with the limiter the gateway's routes use."""

from __future__ import annotations

import grpc
import pytest

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.authz.api_keys import ApiKeys
from services.authz.callers import CallerCheck
from services.authz.policy import Authorizer, Denied
from services.limits.config import parse_limits
from services.limits.limiter import open_limiter
from services.runtime.errors import ResourceExhausted
from services.runtime.identity import ADMIN, ANONYMOUS, USER, Caller

EMBED = "/infermesh.router.v1.RouterService/Embed"
KEYS = {
    "imk_user": res.ApiKey(name="apiKeys/user", roles=[res.ApiKey.ROLE_USER], models=["gemma-3-270m"]),
    "imk_admin": res.ApiKey(name="apiKeys/admin", roles=[res.ApiKey.ROLE_ADMIN]),
    "imk_none": res.ApiKey(name="apiKeys/none"),
}


async def authenticate(secret: str) -> res.ApiKey:
    if secret not in KEYS:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, None, None, "the API key is not recognised")
    return KEYS[secret]


def check(limits: dict | None = None) -> CallerCheck:
    limiter = open_limiter(parse_limits(limits), None) if limits else None
    return CallerCheck(Authorizer(ApiKeys(authenticate)), limiter)


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_credentials_name_the_caller_and_what_a_client_claims_in_headers_counts_for_nothing():
    spoofed = {**bearer("imk_user"), "x-infermesh-role": "admin", "x-infermesh-models": "*"}
    assert await check().caller(EMBED, spoofed) == Caller("apiKeys/user", USER, frozenset({"gemma-3-270m"}))
    assert await check().caller(EMBED, {"x-api-key": "imk_admin"}) == Caller("apiKeys/admin", ADMIN, None)


async def test_refusals_say_who_must_do_what():
    with pytest.raises(Denied) as missing:
        await check().caller(EMBED, {})
    assert missing.value.http_status == 401 and missing.value.headers == {"www-authenticate": "Bearer"}
    with pytest.raises(Denied) as unknown:
        await check().caller(EMBED, bearer("imk_nobody"))
    assert unknown.value.http_status == 401 and "not recognised" in unknown.value.message
    with pytest.raises(Denied) as no_role:
        await check().caller(EMBED, bearer("imk_none"))
    assert no_role.value.http_status == 403 and no_role.value.headers == {}
    assert await check().caller("/grpc.health.v1.Health/Check", {}) == ANONYMOUS  # public


async def test_a_call_from_inside_the_mesh_on_a_callers_behalf_keeps_that_caller():
    """No credentials, identity headers: the vector service embedding for its caller (the
    front door removes these headers from client requests, so only the mesh sends them)."""
    forwarded = Caller("apiKeys/user", USER, frozenset({"all-minilm-l6-v2"})).headers()
    assert await check().caller(EMBED, forwarded) == Caller("apiKeys/user", USER, frozenset({"all-minilm-l6-v2"}))


async def test_a_callers_requests_per_minute_are_counted_and_the_refusal_says_which_limit():
    limited = check({"keys": {"user": {"requests_per_minute": 2}}})
    for _ in range(2):
        await limited.caller(EMBED, bearer("imk_user"))
    with pytest.raises(ResourceExhausted) as refused:
        await limited.caller(EMBED, bearer("imk_user"))
    assert refused.value.reason == "RATE_LIMIT_EXCEEDED" and refused.value.metadata["limit"] == "requests_per_minute"
    assert refused.value.headers["x-infermesh-ratelimit"] == "requests_per_minute"
    assert refused.value.headers["x-ratelimit-limit"] == "2" and refused.value.headers["x-ratelimit-remaining"] == "0"
    assert refused.value.retry_after >= 1
    # Others are not limited by it.
    assert (await limited.caller(EMBED, bearer("imk_admin"))).principal == "apiKeys/admin"
