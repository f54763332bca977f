"""The whole mesh on Consul instead of the embedded catalog (CONSUL_HTTP_ADDR set, nothing
else changed): every service registers itself with a gRPC health check, the gateway
and the router find each other and the backends through Consul, requests are answered,
and a graceful stop deregisters everything. Consul cannot run here (no binary can be
installed): the agent is tests/support/consul_stand_in.py, which serves the documented HTTP API
and runs each registered gRPC health check against the real services."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.mesh import Mesh
from support.consul_stand_in import ConsulStandIn
from support.meshes import mesh_settings
from support.polling import eventually

MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def consul_mesh(tmp_path_factory) -> Iterator[tuple[Mesh, ConsulStandIn]]:
    with ConsulStandIn(probe_grpc=True, probe_interval=0.5) as consul:
        settings = mesh_settings(models=[MINILM], providers=[])
        mesh = Mesh(settings, log_dir=tmp_path_factory.mktemp("consul-mesh"), env={"CONSUL_HTTP_ADDR": consul.address})
        mesh.start()
        try:
            mesh.wait_ready()
            yield mesh, consul
        finally:
            mesh.stop()
        # Graceful shutdown took every instance out of Consul.
        assert [name for name in ("router", "registry", "inference-0") if consul.registered(name)] == []


def test_services_register_in_consul_and_the_mesh_answers_through_it(consul_mesh):
    mesh, consul = consul_mesh
    inference = consul.registered("inference-0")
    assert inference is not None
    assert inference["Service"] == "inference" and inference["Meta"]["models"] == MINILM
    assert "embedding" in inference["Meta"]["capabilities"].split(",")
    assert f"model:{MINILM}" in inference["Tags"]
    (check,) = consul.checks_of("inference-0")
    assert check["Status"] == "passing" and check["Type"] == "grpc"
    assert check["Definition"]["GRPC"] == f"127.0.0.1:{mesh.settings.inference_port}"
    for name in ("router", "registry", "gateway"):
        assert consul.registered(name) is not None

    base = f"http://127.0.0.1:{mesh.settings.front_door_port}"

    def served_by_the_pool() -> bool:
        reply = httpx.post(f"{base}/v1/embed", json={"model": MINILM, "inputs": ["hello consul"]}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["embeddings"][0]["values"]) == 384
        # By name at first, then through the model's pool once Envoy surely has it.
        if reply.headers["x-infermesh-served-by"] == f"inference/{MINILM}":
            return True
        assert reply.headers["x-infermesh-served-by"] == "inference-0"
        return False

    eventually(served_by_the_pool, timeout=10, interval=0.2)


def test_a_backend_failing_its_consul_check_leaves_the_routers_view_and_returns(consul_mesh):
    """The router's per-model health (`infermesh.router.v1.RouterService/<model>`, what
    `make run` waits on) follows Consul: with the only replica's check critical the model
    can't be routed and requests say so; passing again, both come back."""
    mesh, consul = consul_mesh
    base = f"http://127.0.0.1:{mesh.settings.front_door_port}"
    body = {"model": MINILM, "inputs": ["hello consul"]}
    with grpc.insecure_channel(f"127.0.0.1:{mesh.settings.router_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def routable() -> bool:
            request = health_pb2.HealthCheckRequest(service=f"infermesh.router.v1.RouterService/{MINILM}")
            return health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING

        assert routable()
        consul.set_check("inference-0", "critical")
        eventually(lambda: not routable(), timeout=10)
        reply = httpx.post(f"{base}/v1/embed", json=body, timeout=60)
        assert reply.status_code == 503 and reply.json()["details"][0]["reason"] == "MODEL_NOT_DEPLOYED"

        consul.set_check("inference-0", "passing")
        eventually(routable, timeout=10)
        eventually(lambda: httpx.post(f"{base}/v1/embed", json=body, timeout=60).status_code == 200, timeout=15)
