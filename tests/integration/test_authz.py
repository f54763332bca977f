"""The gateway's external authorization service (issue 8), called over real gRPC the way
Envoy calls it, with API keys from a real registry: who may call what, that credentials
are required, that a revoked key stops working within a second, and that a client cannot
claim an identity by sending the identity headers itself."""

from __future__ import annotations

import json
import time

import pytest
import pytest_asyncio
from envoy.service.auth.v3 import external_auth_pb2 as authz_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from google.rpc import code_pb2

from gateway.authz.servicer import AuthorizationServicer
from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from services.authz.api_keys import ApiKeys
from services.authz.policy import ADMIN_METHODS, Authorizer
from support.databases import database
from support.polling import eventually_async
from support.services import registry_server
from support.serving import serving

pytestmark = pytest.mark.asyncio(loop_scope="session")
GENERATE = "/infermesh.router.v1.RouterService/GenerateText"
USER_METHODS = [
    GENERATE,
    "/infermesh.router.v1.RouterService/StreamChat",
    "/infermesh.openai.v1.OpenAIService/CreateChatCompletion",
    "/infermesh.router.v1.UsageService/GetModelMetrics",
    "/infermesh.registry.v1.RegistryService/ListModels",
    "/infermesh.registry.v1.RegistryService/WatchChanges",
    "/infermesh.inference.v1.ModelService/ListModels",
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway():
    """A registry with a user key and an admin key, and the authorization service."""
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as registry:
            stub = registry.registry
            keys = {}
            for name, roles in (("user", [res.ApiKey.ROLE_USER]), ("admin", [res.ApiKey.ROLE_ADMIN])):
                key = res.ApiKey(roles=roles, models=["gemma-3-270m"] if name == "user" else [])
                keys[name] = (await stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id=name, api_key=key))).secret

            async def authenticate(secret: str) -> res.ApiKey:
                return await stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=secret))

            servicer = AuthorizationServicer(Authorizer(ApiKeys(authenticate, cache_seconds=1.0)))
            async with serving([(authz_grpc.add_AuthorizationServicer_to_server, servicer)]) as served:
                yield authz_grpc.AuthorizationStub(served.channel), stub, keys


async def check(authz, path: str, **headers: str) -> authz_pb.CheckResponse:
    request = authz_pb.CheckRequest()
    request.attributes.request.http.path = path
    request.attributes.request.http.method = "POST"
    for name, value in headers.items():
        request.attributes.request.http.headers[name.replace("_", "-")] = value
    return await authz.Check(request)


def added(response: authz_pb.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


async def test_every_method_needs_credentials_except_health_and_reflection(gateway):
    authz, _, _ = gateway
    for path in [*USER_METHODS, *sorted(ADMIN_METHODS)]:
        reply = await check(authz, path)
        assert reply.status.code == code_pb2.UNAUTHENTICATED and reply.denied_response.status.code == 401, path
        assert '"code": 16' in reply.denied_response.body
    wrong = await check(authz, GENERATE, authorization="Bearer imk_not-a-real-key")
    assert wrong.denied_response.status.code == 401 and "not recognised" in wrong.denied_response.body
    for path in ("/grpc.health.v1.Health/Check", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        assert (await check(authz, path)).status.code == code_pb2.OK


async def test_refusals_of_openai_rest_calls_are_in_openais_shape_and_say_so_to_envoy(gateway):
    """A transcoded OpenAI call (Envoy names its REST path in x-envoy-original-path) is
    refused with OpenAI's error body, marked in the filter's dynamic metadata for the
    front door's local reply mappers to leave alone; a gRPC client of the same service
    gets google.rpc.Status like every other caller."""
    authz, _, _ = gateway
    path = "/infermesh.openai.v1.OpenAIService/CreateChatCompletion"
    rest = await check(authz, path, x_envoy_original_path="/v1/chat/completions")
    assert rest.denied_response.status.code == 401
    assert json.loads(rest.denied_response.body) == {
        "error": {
            "message": "credentials are required: send Authorization: Bearer <API key or token>",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert rest.dynamic_metadata["openai_error"] is True
    grpc_caller = await check(authz, path)
    assert json.loads(grpc_caller.denied_response.body)["code"] == code_pb2.UNAUTHENTICATED
    assert "openai_error" not in grpc_caller.dynamic_metadata


async def test_a_user_key_may_infer_and_read_but_not_administer(gateway):
    authz, _, keys = gateway
    for path in USER_METHODS:
        reply = await check(authz, path, authorization=f"Bearer {keys['user']}")
        assert reply.status.code == code_pb2.OK, path
        assert added(reply) == {
            "x-infermesh-principal": "apiKeys/user",
            "x-infermesh-role": "user",
            "x-infermesh-models": "gemma-3-270m",
        }
    for path in sorted(ADMIN_METHODS):
        reply = await check(authz, path, x_api_key=keys["user"])
        assert reply.status.code == code_pb2.PERMISSION_DENIED and reply.denied_response.status.code == 403, path
        assert "needs the admin role" in reply.denied_response.body


async def test_an_admin_key_may_do_everything_but_call_internal_methods(gateway):
    authz, _, keys = gateway
    for path in [*USER_METHODS, *sorted(ADMIN_METHODS)]:
        reply = await check(authz, path, authorization=f"Bearer {keys['admin']}")
        assert reply.status.code == code_pb2.OK and added(reply)["x-infermesh-models"] == "*", path
    internal = await check(
        authz, "/infermesh.registry.v1.RegistryService/AuthenticateApiKey", authorization=f"Bearer {keys['admin']}"
    )
    assert internal.denied_response.status.code == 403


async def test_a_client_cannot_claim_an_identity_with_headers(gateway):
    authz, _, keys = gateway
    spoofed = await check(authz, GENERATE, authorization=f"Bearer {keys['user']}", x_infermesh_role="admin")
    assert added(spoofed)["x-infermesh-role"] == "user"
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in spoofed.ok_response.headers)
    public = await check(authz, "/grpc.health.v1.Health/Check", x_infermesh_role="admin")
    assert set(public.ok_response.headers_to_remove) == {
        "x-infermesh-principal",
        "x-infermesh-role",
        "x-infermesh-models",
    }


async def test_a_revoked_key_stops_working_within_a_second(gateway):
    authz, registry, _ = gateway
    issued = await registry.CreateApiKey(pb.CreateApiKeyRequest(api_key=res.ApiKey(roles=[res.ApiKey.ROLE_USER])))
    assert (await check(authz, GENERATE, authorization=f"Bearer {issued.secret}")).status.code == code_pb2.OK
    await registry.RevokeApiKey(pb.RevokeApiKeyRequest(name=issued.api_key.name))
    revoked_at = time.monotonic()

    async def refused() -> bool:
        return (await check(authz, GENERATE, authorization=f"Bearer {issued.secret}")).status.code != code_pb2.OK

    await eventually_async(refused, timeout=5, interval=0.05, what="the revoked key refused")
    took = time.monotonic() - revoked_at
    refused = await check(authz, GENERATE, authorization=f"Bearer {issued.secret}")
    assert took <= 1.1 and "revoked" in refused.denied_response.body
