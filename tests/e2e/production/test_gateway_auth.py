"""Authorization at the front door (issue 8), on the production mesh (conftest.py: MESH_AUTH
on; shared with the rate limit and tracing tests): Envoy asks the gateway's authorization service
about every request, REST and gRPC alike; API keys come from the registry. What a user notices: no credentials is
401, a user key on an admin route is 403, the right role gets through, a key limited to
some models gets 403 for others, a revoked key stops working within a second, and
nobody can claim an identity by sending the gateway's headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import httpx
import jwt
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as registry_pb
from infermesh.registry.v1 import registry_service_pb2_grpc as registry_grpc
from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from launcher.mesh import Mesh
from support.metrics import metric
from support.polling import eventually

from .config import AUDIENCE, ISSUER, MINILM, SIGNING_KEY, ProductionMesh

EMBED = {"model": MINILM, "inputs": ["hello"]}


@pytest.fixture(scope="module")
def auth_mesh(production_mesh: ProductionMesh) -> tuple[Mesh, str]:
    """The mesh, and the admin key its first start issued (conftest.py checks it was
    issued then and only then); OIDC tokens signed by config.SIGNING_KEY are accepted."""
    return production_mesh.mesh, production_mesh.admin


@pytest.fixture(scope="module")
def secured(auth_mesh) -> tuple[str, str]:
    mesh, admin = auth_mesh
    return f"127.0.0.1:{mesh.settings.front_door_port}", admin


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def issue(front: str, admin: str, roles: list[str], models: list[str]) -> tuple[str, str]:
    reply = httpx.post(
        f"http://{front}/v1/registry/apiKeys", json={"roles": roles, "models": models}, headers=bearer(admin)
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["api_key"]["name"], reply.json()["secret"]


def test_requests_without_credentials_are_refused_over_rest_and_grpc(secured):
    front, _ = secured
    refused = httpx.post(f"http://{front}/v1/embed", json=EMBED)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "credentials are required" in refused.json()["message"]
    with grpc.insecure_channel(front) as channel:
        with pytest.raises(grpc.RpcError) as error:
            router_grpc.RouterServiceStub(channel).Embed(router_messages.EmbedRequest(**EMBED), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health checks need none (configurable).
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_roles_decide_who_may_administer_and_keys_may_be_limited_to_models(secured):
    front, admin = secured
    assert httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(admin)).status_code == 200
    _, user = issue(front, admin, ["ROLE_USER"], [MINILM])
    assert httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(user)).status_code == 200
    assert httpx.get(f"http://{front}/v1/registry/models", headers=bearer(user)).status_code == 200
    write = httpx.post(
        f"http://{front}/v1/registry/models", params={"model_id": "not-yours"}, json={}, headers=bearer(user)
    )
    assert write.status_code == 403 and "needs the admin role" in write.json()["message"]
    assert httpx.get(f"http://{front}/v1/registry/apiKeys", headers=bearer(user)).status_code == 403
    # A key for another model only: the router refuses this one, whatever headers the client adds.
    _, gemma_only = issue(front, admin, ["ROLE_USER"], ["gemma-3-270m"])
    spoofed = {**bearer(gemma_only), "x-infermesh-models": "*", "x-infermesh-role": "admin"}
    other = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=spoofed)
    assert other.status_code == 403 and other.json()["details"][0]["reason"] == "MODEL_NOT_ALLOWED"
    # The registry's key check is for the gateway alone, even for an admin.
    with grpc.insecure_channel(front) as channel:
        with pytest.raises(grpc.RpcError) as error:
            registry_grpc.RegistryServiceStub(channel).AuthenticateApiKey(
                registry_pb.AuthenticateApiKeyRequest(secret=user), metadata=list(bearer(admin).items()), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_revoked_key_stops_working_within_a_second(secured):
    front, admin = secured
    name, user = issue(front, admin, ["ROLE_USER"], [])
    assert httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(user)).status_code == 200
    assert httpx.post(f"http://{front}/v1/registry/{name}:revoke", json={}, headers=bearer(admin)).status_code == 200
    revoked_at = time.monotonic()
    # Until the revocation is seen, the key is answered (or, past its third MiniLM request
    # this minute, refused by the mesh's per-model limit, 429); then refused as revoked, 401.
    eventually(
        lambda: httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(user)).status_code == 401,
        timeout=5,
        interval=0.05,
        what="the revoked key refused",
    )
    assert time.monotonic() - revoked_at <= 1.2
    refused = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(user))
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]


def test_the_router_checks_its_own_calls_with_no_round_trip_to_the_gateway(auth_mesh):
    """Issue 19: Envoy's ext_authz is off on the routes to the router, which checks the
    calls itself (services/router/authorization.py); the gateway still decides the other
    routes. A client's identity headers never reach the router: without credentials they
    claim nothing."""
    mesh, admin = auth_mesh
    front = f"127.0.0.1:{mesh.settings.front_door_port}"

    def decisions() -> float:
        return metric(mesh.settings.gateway_metrics_port, "infermesh_authz_decisions_total")

    before = decisions()
    # (Models lists: MiniLM's embeddings are limited to 3 a minute per caller here.)
    for _ in range(5):
        assert httpx.get(f"http://{front}/v1/models", headers=bearer(admin)).status_code == 200
    assert MINILM in {m.id for m in sdk(front, admin).models.list()}
    assert decisions() == before  # none of the six asked the gateway
    assert httpx.get(f"http://{front}/v1/registry/models", headers=bearer(admin)).status_code == 200
    assert decisions() == before + 1
    claimed = {"x-infermesh-principal": "apiKeys/admin", "x-infermesh-role": "admin", "x-infermesh-models": "*"}
    spoofed = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=claimed)
    assert spoofed.status_code == 401 and spoofed.headers["www-authenticate"] == "Bearer"
    # Unauthenticated callers learn nothing of the API: 401 before the body is validated.
    assert httpx.post(f"http://{front}/v1/embed", json={"model": ""}).status_code == 401


def test_vector_search_embeds_through_the_router_as_its_own_caller(secured):
    """The vector service's embedding calls carry its caller's identity, with no
    credentials: the router takes them as calls from inside the mesh, and the caller's
    model restrictions still apply there."""
    front, admin = secured
    _, user = issue(front, admin, ["ROLE_USER"], [])  # fresh: MiniLM allows 3 requests a minute per key here
    collection = {"distance": "DISTANCE_COSINE", "embedding_model": MINILM}
    created = httpx.post(
        f"http://{front}/v1/collections", params={"collection_id": "auth-notes"}, json=collection, headers=bearer(user)
    )
    assert created.status_code == 200, created.text
    points = {"points": [{"id": "1", "text": "the rocket reached orbit"}]}
    upsert = httpx.post(
        f"http://{front}/v1/collections/auth-notes/points:upsert", json=points, headers=bearer(user), timeout=60
    )
    assert upsert.status_code == 200, upsert.text
    _, gemma_only = issue(front, admin, ["ROLE_USER"], ["gemma-3-270m"])
    refused = httpx.post(
        f"http://{front}/v1/collections/auth-notes:query", json={"text": "space"}, headers=bearer(gemma_only)
    )
    assert refused.status_code == 403 and "may not use model" in refused.json()["message"]


def sdk(front: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{front}/v1", api_key=secret, max_retries=0, timeout=60)


def test_refusals_on_the_openai_paths_are_in_openais_shape_and_native_ones_are_not(secured):
    """The official SDK raises its own classes with our message; the native REST API
    keeps google.rpc.Status JSON for the same refusals."""
    front, admin = secured
    with pytest.raises(openai.AuthenticationError) as unknown:
        sdk(front, "imk_not-a-key").embeddings.create(model=MINILM, input="hello")
    assert unknown.value.type == "authentication_error" and unknown.value.code == "invalid_api_key"
    assert unknown.value.param is None and "not recognised" in unknown.value.body["message"]
    assert unknown.value.message == f"Error code: 401 - {unknown.value.body['message']}"
    assert unknown.value.response.headers["www-authenticate"] == "Bearer"
    missing = httpx.get(f"http://{front}/v1/models")
    assert missing.status_code == 401 and missing.headers["content-type"] == "application/json"
    assert missing.json()["error"]["message"].startswith("credentials are required")
    with pytest.raises(openai.PermissionDeniedError) as no_role:
        sdk(front, token([])).models.list()
    assert no_role.value.type == "permission_error" and no_role.value.code == "permission_denied"
    assert "needs the user role" in no_role.value.body["message"]
    # A key that may: answered (the OpenAI surface behind the same authorization).
    assert MINILM in {m.id for m in sdk(front, admin).models.list()}
    native = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer("imk_not-a-key"))
    assert native.status_code == 401 and native.json() == {
        "code": 16,
        "message": unknown.value.body["message"],
        "details": [],
    }


def test_files_and_batches_belong_to_their_caller_and_run_as_it(secured):
    """The jobs service is behind ext_authz: no credentials is OpenAI's 401, another key
    sees none of a caller's files or batches, and a batch's requests reach the router as
    its owner, whose model restrictions apply to each line."""
    front, admin = secured
    with pytest.raises(openai.AuthenticationError):
        sdk(front, "imk_not-a-key").files.list()
    _, owner = issue(front, admin, ["ROLE_USER"], ["gemma-3-270m"])  # may not use MiniLM
    _, other = issue(front, admin, ["ROLE_USER"], [])
    line = {"custom_id": "one", "method": "POST", "url": "/v1/embeddings", "body": {"model": MINILM, "input": "hi"}}
    upload = sdk(front, owner).files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = sdk(front, owner).batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    for hidden in (lambda c: c.files.retrieve(upload.id), lambda c: c.batches.retrieve(batch.id)):
        with pytest.raises(openai.NotFoundError):
            hidden(sdk(front, other))
    assert sdk(front, other).batches.list().data == []
    done = eventually(
        lambda: sdk(front, owner).batches.retrieve(batch.id),
        until=lambda b: b.status == "completed",
        timeout=60,
        interval=0.5,
        what="the batch completing",
    )
    [refused] = [json.loads(x) for x in sdk(front, owner).files.content(done.error_file_id).text.splitlines()]
    assert refused["response"]["status_code"] == 403, refused
    assert "may not use model" in refused["response"]["body"]["error"]["message"]


def token(roles: list[str], expires_in: float = 300, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + expires_in, "roles": roles}
    return jwt.encode({**body, **claims}, SIGNING_KEY, algorithm="RS256", headers={"kid": "k1"})


def test_oidc_tokens_from_the_configured_issuer_are_accepted_by_their_roles(secured):
    front, _ = secured
    assert httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(token(["user"]))).status_code == 200
    no_role = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(token([])))
    assert no_role.status_code == 403 and "needs the user role" in no_role.json()["message"]
    expired = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(token(["user"], expires_in=-600)))
    assert expired.status_code == 401 and "token expired" in expired.json()["message"]
    wrong = httpx.post(f"http://{front}/v1/embed", json=EMBED, headers=bearer(token(["user"], aud="someone-else")))
    assert wrong.status_code == 401 and "audience" in wrong.json()["message"]
    admin_token = bearer(token(["admin"]))
    assert httpx.get(f"http://{front}/v1/registry/apiKeys", headers=admin_token).status_code == 200


def test_admin_actions_are_audited_under_the_identity_the_gateway_established(secured):
    front, admin = secured
    name, _ = issue(front, admin, ["ROLE_USER"], [])
    log = httpx.get(f"http://{front}/v1/registry/auditEvents", headers=bearer(admin)).json()["audit_events"]
    assert {"principal": "apiKeys/admin", "action": "CreateApiKey", "resource": name, "result": "OK"}.items() <= (
        log[0].items()
    )


def test_model_loads_and_unloads_are_audited_with_who_asked_and_how_they_ended(secured):
    """The inference server records its loads and unloads in the registry's audit log:
    when asked (or refused) and when the operation ends."""
    front, admin = secured

    def run(verb: str) -> dict:
        reply = httpx.post(
            f"http://{front}/v1/backend/models/{MINILM}:{verb}", json={}, headers=bearer(admin), timeout=60
        )
        assert reply.status_code == 200, reply.text
        url = f"http://{front}/v1/{reply.json()['name']}"
        return eventually(
            lambda: httpx.get(url, headers=bearer(admin), timeout=30).json(),
            until=lambda operation: operation.get("done"),
            timeout=120,
            interval=0.2,
        )

    assert run("unload")["response"]["state"] == "MODEL_STATE_UNLOADED"
    assert run("load")["response"]["state"] == "MODEL_STATE_READY"
    missing = httpx.post(
        f"http://{front}/v1/backend/models/no-such-model:load", json={}, headers=bearer(admin), timeout=60
    )
    assert missing.status_code == 404
    log = httpx.get(f"http://{front}/v1/registry/auditEvents", headers=bearer(admin)).json()["audit_events"]
    lifecycle = [
        (e["principal"], e["action"], e["resource"], e["result"], e["detail"])
        for e in reversed(log)
        if e["action"] in ("LoadModel", "UnloadModel")
    ]
    resource = f"models/{MINILM}"
    assert lifecycle[-5:] == [
        ("apiKeys/admin", "UnloadModel", resource, "OK", "unload requested"),
        ("apiKeys/admin", "UnloadModel", resource, "OK", "unload done"),
        ("apiKeys/admin", "LoadModel", resource, "OK", "load requested"),
        ("apiKeys/admin", "LoadModel", resource, "OK", "load done"),
        ("apiKeys/admin", "LoadModel", "models/no-such-model", "NOT_FOUND", lifecycle[-1][4]),
    ]
    # Recording is for services inside the mesh: the front door refuses it, even to an admin.
    with grpc.insecure_channel(front) as channel:
        with pytest.raises(grpc.RpcError) as error:
            event = res.AuditEvent(principal="apiKeys/someone-else", action="DeleteModel", resource="x", result="OK")
            registry_grpc.RegistryServiceStub(channel).RecordAuditEvent(
                registry_pb.RecordAuditEventRequest(audit_event=event), metadata=list(bearer(admin).items()), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_make_admin_key_issues_another_admin_key_for_the_running_mesh(auth_mesh):
    mesh, _ = auth_mesh
    env = {**os.environ, "MESH_HOST": mesh.settings.host, "MESH_REGISTRY_PORT": str(mesh.settings.registry_port)}
    out = subprocess.run(
        [sys.executable, "-m", "launcher.admin_key"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    secret = out.stdout.split("export INFERMESH_API_KEY=")[1].split()[0]
    front = f"127.0.0.1:{mesh.settings.front_door_port}"
    assert httpx.get(f"http://{front}/v1/registry/apiKeys", headers=bearer(secret)).status_code == 200
    # With the mesh down (nothing on that port), it says so instead of a traceback.
    env["MESH_REGISTRY_PORT"] = "1"
    down = subprocess.run(
        [sys.executable, "-m", "launcher.admin_key"], env=env, capture_output=True, text=True, timeout=60
    )
    assert down.returncode != 0 and "is the mesh running?" in down.stderr
