"""The Consul catalog: registration, discovery that follows health and readiness, outages,
and the same contract as the embedded catalog.

No Consul binary can be installed on these machines, so Consul here is a stand-in
(tests/support/consul_stand_in.py): the part of the agent's documented HTTP API the catalog uses,
blocking queries and ACLs included, which runs the registered gRPC health checks against
the instances' real grpc.health.v1 servers. The catalog itself (py-consul on httpx) is the
production code, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from services.runtime.catalog import Catalog, EmbeddedCatalog, ServiceInstance
from services.runtime.catalogs import open_catalog
from services.runtime.consul_catalog import ConsulCatalog, ConsulError
from support.consul_stand_in import ConsulStandIn
from support.ports import free_port
from support.serving import serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
View = list[ServiceInstance]


@contextlib.asynccontextmanager
async def health_server(status: int = SERVING) -> AsyncIterator[tuple[int, HealthServicer]]:
    """A gRPC server with only the health service: what Consul's check talks to."""
    async with serving([], health={"": status}) as served:
        yield served.port, served.health


def inference(port: int, models: tuple[str, ...] = (), name: str = "inference-0") -> ServiceInstance:
    return ServiceInstance(
        name=name,
        kind="inference",
        host="127.0.0.1",
        port=port,
        models=models,
        capabilities=("text-generation", "embeddings"),
        version="0.1.0",
    )


async def view_where(catalog: Catalog, ok: Callable[[View], bool], timeout: float = 5.0) -> View:
    """The first view `watch()` yields that satisfies `ok`."""
    async with asyncio.timeout(timeout):
        async for view in catalog.watch():
            if ok(view):
                return view
    raise AssertionError("unreachable")


@pytest.fixture
def consul() -> Iterator[ConsulStandIn]:
    with ConsulStandIn(port=free_port(), probe_grpc=True) as stand_in:
        yield stand_in


@contextlib.asynccontextmanager
async def started(catalog: Catalog) -> AsyncIterator[Catalog]:
    await catalog.start()
    try:
        yield catalog
    finally:
        await catalog.close()


# -- registering --------------------------------------------------------------------


async def test_registration_carries_a_grpc_check_on_the_instance_address_tags_meta_and_the_token():
    with ConsulStandIn(port=free_port(), token="s3cret") as consul:
        writer = ConsulCatalog(consul.address, token="s3cret")
        instance = ServiceInstance(
            name="inference-0",
            kind="inference",
            host="10.1.2.3",
            port=50052,
            models=("gemma-3-270m", "all-minilm-l6-v2"),
            capabilities=("text-generation", "embeddings"),
            version="0.1.0",
        )
        await writer.register(instance)
        await writer.close()

    (write,) = consul.writes()
    assert (write.method, write.path) == ("PUT", "/v1/agent/service/register")
    assert write.headers["x-consul-token"] == "s3cret"
    assert consul.registered("inference-0") == {
        "ID": "inference-0",
        "Service": "inference",  # replicas group under their kind
        "Tags": ["infermesh", "inference", "model:gemma-3-270m", "model:all-minilm-l6-v2"],
        "Address": "10.1.2.3",
        "Port": 50052,
        "Meta": {
            "kind": "inference",
            "models": "gemma-3-270m,all-minilm-l6-v2",
            "capabilities": "text-generation,embeddings",
            "version": "0.1.0",
        },
    }
    (check,) = consul.checks_of("inference-0")
    assert check["CheckID"] == "service:inference-0" and check["Type"] == "grpc"
    assert check["Definition"] == {
        "GRPC": "10.1.2.3:50052",
        "GRPCUseTLS": False,
        "Interval": "5s",
        "Timeout": "2s",
        "DeregisterCriticalServiceAfter": "1m",
    }
    assert check["Status"] == "critical"  # until the agent's first check passes


async def test_the_token_comes_from_the_environment_and_a_refused_one_fails_clearly(monkeypatch):
    instance = inference(50052)
    with ConsulStandIn(port=free_port(), token="s3cret") as consul:
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "s3cret")
        from_environment = ConsulCatalog(consul.address)
        await from_environment.register(instance)
        assert consul.writes()[-1].headers["x-consul-token"] == "s3cret"

        wrong = ConsulCatalog(consul.address, token="not-a-token")
        with pytest.raises(
            ConsulError, match=rf"registering inference-0 with Consul at http://{consul.address}.*ACL not found"
        ):
            await wrong.register(instance)
        anonymous = ConsulCatalog(consul.address, token="")  # explicitly none, whatever the environment says
        with pytest.raises(ConsulError, match="Permission denied"):
            await anonymous.register(instance)
        for catalog in (from_environment, wrong, anonymous):
            await catalog.close()


# -- discovering --------------------------------------------------------------------


async def test_a_reader_sees_an_instance_once_its_grpc_health_check_passes(consul):
    async with health_server(NOT_SERVING) as (port, health):
        writer = ConsulCatalog(consul.address)
        await writer.register(inference(port, ("gemma-3-270m",)))
        async with started(ConsulCatalog(consul.address)) as reader:
            await asyncio.sleep(0.3)  # several checks have run, all failing
            assert reader.instances() == []
            await health.set("", SERVING)  # models loaded
            await view_where(reader, lambda view: bool(view))
            assert reader.instances("inference") == [inference(port, ("gemma-3-270m",))]
            assert reader.instances("router") == []
        await writer.close()


async def test_a_readiness_change_reaches_watchers_within_a_second_through_a_blocking_query(consul):
    async with health_server() as (port, _):
        writer = ConsulCatalog(consul.address)
        await writer.register(inference(port))
        async with started(ConsulCatalog(consul.address, wait_seconds=60)) as reader:
            await view_where(reader, lambda view: view == [inference(port)])
            await asyncio.sleep(0.2)  # the reader's queries are now waiting in Consul
            reads_before = len(consul.requests)
            began = time.monotonic()
            await writer.register(inference(port, ("gemma-3-270m",)))
            await view_where(reader, lambda view: view == [inference(port, ("gemma-3-270m",))], timeout=1.0)
            elapsed = time.monotonic() - began
        await writer.close()

    # The change came on a blocking query that was already waiting (asked before the
    # change, answered after it), not on a poll; and it took a handful of requests.
    assert elapsed < 1.0
    print(
        [
            (r.path, r.query, r.received - began, r.answered and r.answered - began)
            for r in consul.requests
            if r.method == "GET"
        ]
    )
    health_reads = [r for r in consul.requests if r.path == "/v1/health/service/inference"]
    assert any(r.received < began <= (r.answered or 0) and "index" in r.query for r in health_reads)
    assert all(r.query.get("wait") == "60000ms" and "passing" in r.query for r in health_reads if "index" in r.query)
    assert len([r for r in consul.requests[reads_before:] if r.method == "GET"]) <= 6


async def test_an_instance_whose_check_goes_critical_leaves_the_view_and_comes_back(consul):
    async with health_server() as (port, health):
        writer = ConsulCatalog(consul.address)
        await writer.register(inference(port, ("gemma-3-270m",)))
        async with started(ConsulCatalog(consul.address)) as reader:
            await view_where(reader, lambda view: len(view) == 1)
            await health.set("", NOT_SERVING)  # e.g. graceful shutdown began
            await view_where(reader, lambda view: view == [])
            await health.set("", SERVING)
            await view_where(reader, lambda view: len(view) == 1)
        await writer.close()


async def test_a_killed_instance_leaves_the_view_when_its_check_cannot_connect(consul):
    writer = ConsulCatalog(consul.address)
    async with started(ConsulCatalog(consul.address)) as reader:
        async with health_server() as (port, _):
            await writer.register(inference(port))
            await view_where(reader, lambda view: len(view) == 1)
        await view_where(reader, lambda view: view == [])  # the server is gone, its entry is not
        assert consul.registered("inference-0") is not None
    await writer.close()


async def test_a_deregistered_instance_leaves_the_view(consul):
    async with health_server() as (port_a, _), health_server() as (port_b, _):
        writer = ConsulCatalog(consul.address)
        await writer.register(inference(port_a, name="inference-0"))
        await writer.register(inference(port_b, name="inference-1"))
        async with started(ConsulCatalog(consul.address)) as reader:
            await view_where(reader, lambda view: [s.name for s in view] == ["inference-0", "inference-1"])
            await writer.deregister(inference(port_a, name="inference-0"))
            await view_where(reader, lambda view: [s.name for s in view] == ["inference-1"])
            await writer.deregister(inference(port_b, name="inference-1"))
            await view_where(reader, lambda view: view == [])
            assert "inference" not in await consul_services(consul)
        await writer.close()


async def test_only_infermesh_services_are_read_and_an_empty_address_is_the_node_address(consul):
    async with httpx.AsyncClient(base_url=f"http://{consul.address}") as client:
        # One registered by hand (as consul/*.json do), without an address; one not ours.
        hand = {
            "ID": "registry",
            "Name": "registry",
            "Port": 50053,
            "Tags": ["infermesh"],
            "Meta": {"kind": "registry"},
        }
        (await client.put("/v1/agent/service/register", json=hand)).raise_for_status()
        (await client.put("/v1/agent/service/register", json={"Name": "postgres", "Port": 5432})).raise_for_status()
    async with started(ConsulCatalog(consul.address)) as reader:
        assert reader.instances() == [ServiceInstance(name="registry", kind="registry", host="127.0.0.1", port=50053)]


async def consul_services(consul: ConsulStandIn) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{consul.address}/v1/catalog/services")).json()


# -- when Consul is away ---------------------------------------------------------------


async def test_start_fails_clearly_when_consul_is_unreachable():
    # A misconfigured CONSUL_HTTP_ADDR should stop the service at once, naming the address,
    # not leave it running with an empty view that looks like "no backends".
    address = f"127.0.0.1:{free_port()}"
    catalog = ConsulCatalog(address, start_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(ConsulError, match=rf"Consul at http://{address} did not answer.*ConnectError"):
        await catalog.start()
    assert time.monotonic() - began < 3
    await catalog.close()


async def test_an_outage_keeps_the_last_view_logs_it_and_recovers(consul, caplog):
    caplog.set_level(logging.WARNING, logger="services.runtime.consul_catalog")
    async with health_server() as (port, _):
        writer = ConsulCatalog(consul.address)
        await writer.register(inference(port))
        async with started(ConsulCatalog(consul.address)) as reader:
            await view_where(reader, lambda view: len(view) == 1)

            consul.stop()  # the agent dies; its state survives (as a server's raft log does)
            async with asyncio.timeout(5):
                while not [r for r in caplog.records if r.getMessage().startswith("consul query failed")]:
                    await asyncio.sleep(0.05)
            failure = next(r for r in caplog.records if r.getMessage().startswith("consul query failed"))
            assert failure.consul == f"http://{consul.address}" and failure.attempt >= 1
            assert failure.query in ("services", "health/service/inference") and failure.error
            assert reader.instances() == [inference(port)]  # the last view, not an empty one

            consul.start()
            await writer.register(inference(port, ("gemma-3-270m",)))
            await view_where(reader, lambda view: view == [inference(port, ("gemma-3-270m",))], timeout=15)
        await writer.close()


# -- one contract, two catalogs -------------------------------------------------------------


@pytest.fixture(params=["embedded", "consul"])
def catalogs(request, tmp_path) -> Iterator[tuple[Catalog, Catalog]]:
    """A writer and a reader of one catalog, as two processes would have."""
    if request.param == "embedded":
        yield EmbeddedCatalog(tmp_path / "catalog"), EmbeddedCatalog(tmp_path / "catalog")
        return
    with ConsulStandIn(port=free_port(), probe_grpc=True) as consul:
        yield ConsulCatalog(consul.address), ConsulCatalog(consul.address)


async def test_both_catalogs_keep_the_same_contract(catalogs):
    writer, reader = catalogs
    async with health_server() as (port, _), started(reader):
        views = reader.watch()
        seen: list[View] = []

        async def until(expected: View) -> None:
            async with asyncio.timeout(5):
                while not seen or seen[-1] != expected:
                    seen.append(await anext(views))

        instance = inference(port)
        await until([])
        await writer.register(instance)
        await until([instance])
        await writer.register(instance.with_models(["gemma-3-270m"]))
        await until([instance.with_models(["gemma-3-270m"])])
        await writer.deregister(instance)
        await until([])
        await views.aclose()
        await writer.close()

    # Every change seen once, in order, and nothing else.
    assert seen == [[], [instance], [instance.with_models(["gemma-3-270m"])], []]


def test_open_catalog_picks_consul_only_when_an_address_is_set(tmp_path):
    fixed = [ServiceInstance(name="router", kind="router", host="router", port=50051)]
    embedded = open_catalog("", tmp_path, fixed)
    assert isinstance(embedded, EmbeddedCatalog) and embedded.instances() == fixed
    consul = open_catalog("consul:8500", None, fixed, consul_token="t")
    assert isinstance(consul, ConsulCatalog) and consul.url == "http://consul:8500"
    assert consul.instances() == fixed  # fixed entries are part of the view, nothing contacted yet
    with pytest.raises(ValueError, match="CONSUL_HTTP_ADDR"):
        open_catalog("ftp://consul", None)
