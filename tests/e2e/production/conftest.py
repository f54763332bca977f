"""The production mesh this package's tests share: one start instead of three
(authorization, rate limits and tracing each had a mesh of their own). Their settings at
once: auth on, OIDC tokens from a test identity provider (config.SIGNING_KEY; its JWKS
in a file, as an identity provider publishes it), RATE_LIMITS with counters in a real
redis-server, gemma-3-270m and all-minilm-l6-v2, a second gateway replica (a gateway
process and an Envoy) beside the first, and OTEL_EXPORTER_OTLP_ENDPOINT pointed at a
collector in the test process (support.trace_collector), as it would be at Jaeger."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jwt
import pytest

from gateway.envoy_config import EnvoyPorts
from support.databases import redis_server
from support.meshes import mesh_running, mesh_settings
from support.polling import eventually
from support.ports import free_port
from support.serving import serving
from support.trace_collector import TraceCollector, exporting_to

from .config import AUDIENCE, GEMMA, ISSUER, LIMITS, MINILM, SIGNING_KEY, ProductionMesh


@pytest.fixture(scope="package")
def trace_collector() -> Iterator[TraceCollector]:
    collector = TraceCollector()
    with serving([collector.registration]) as served:  # threaded: it receives while tests run
        collector.port = served.port
        yield collector


@pytest.fixture(scope="package")
def production_mesh(
    tmp_path_factory: pytest.TempPathFactory, trace_collector: TraceCollector
) -> Iterator[ProductionMesh]:
    jwks = tmp_path_factory.mktemp("idp") / "jwks.json"
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    with redis_server() as redis_url:
        settings = mesh_settings(models=[GEMMA, MINILM], providers=[], auth=True)
        env = {
            "OIDC_ISSUER": ISSUER,
            "OIDC_AUDIENCE": AUDIENCE,
            "OIDC_JWKS": str(jwks),
            "RATE_LIMITS": json.dumps(LIMITS),
            "RATE_LIMIT_REDIS_URL": redis_url,
            **exporting_to(trace_collector.port),
        }
        with mesh_running(settings, tmp_path_factory.mktemp("production-mesh"), env) as mesh:
            admin = mesh.ensure_admin_key()
            assert admin is not None and admin.startswith("imk_")
            assert mesh.ensure_admin_key() is None  # only on the first start
            second = mesh.add_gateway(EnvoyPorts(free_port(), free_port(), free_port()), free_port())
            admin_key = {"authorization": f"Bearer {admin}"}
            eventually(
                lambda: httpx.get(f"http://{second}/v1/registry/models", headers=admin_key).status_code == 200,
                timeout=60,
                interval=0.25,
                what=f"the second gateway at {second} answering",
                ignoring=httpx.TransportError,
            )
            yield ProductionMesh(mesh, admin, [f"127.0.0.1:{settings.front_door_port}", second], trace_collector)
