"""The router's model directory against a real registry (SQLite, in this process): it
replays the feed before serving, resolves `model` and `model@version` to a backend by
deployment weights, follows changes live, resumes after the registry restarts, and
turns registry limits into clear errors."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.router.v1 import router_messages_pb2 as router_messages
from services.router.backend_client import EnvoyBackendClient
from services.router.core.calls import CallContext
from services.router.core.load import ModelLoad
from services.router.core.resolvers import RegistryResolver
from services.router.core.router import RouterCore
from services.router.registry_feed import RegistryFeed
from services.runtime.catalog import EmbeddedCatalog, ServiceInstance
from services.runtime.errors import DomainError, InvalidArgument, NotFound, Unavailable
from support.databases import database
from support.polling import eventually_async
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


def catalog(registry_port: int) -> EmbeddedCatalog:
    return EmbeddedCatalog.of(
        [
            ServiceInstance("router", "router", "127.0.0.1", 1),
            ServiceInstance(
                "inference-0",
                "inference",
                "127.0.0.1",
                2,
                ("gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"),
            ),
            ServiceInstance("registry", "registry", "127.0.0.1", registry_port),
        ]
    )


async def following(channel: grpc.aio.Channel, port: int) -> tuple[RegistryResolver, RegistryFeed]:
    """The router's view of the registry, its backlog replayed."""
    resolver = RegistryResolver(catalog(port))
    feed = RegistryFeed(channel, "registry", resolver)
    await feed.start(timeout=10)
    return resolver, feed


async def test_routes_follow_the_registry(tmp_path):
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            # Without Envoy in between, the registry is dialled directly (the header is unused).
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            directory, feed = await following(channel, server.port)
            try:
                route = directory.route("gemma-3-270m")
                # Deployed on the `inference` kind, with a replica that has it ready: the
                # model's pool, which Envoy balances among such replicas.
                assert (route.backend, route.backend_model, route.version) == (
                    "inference/gemma-3-270m",
                    "gemma-3-270m",
                    "bf16",
                )
                assert route.max_output_tokens == 8192
                assert directory.models() == [
                    "all-minilm-l6-v2",
                    "gemma-3-270m",
                    "mobilenet-v2",
                    "piper-en-us-joe",
                    "pp-ocrv6",
                    "qwen2.5-coder-0.5b-instruct",
                    "whisper-base",
                ]

                # An explicit version reaches a deployment with no traffic (try a canary first).
                registry = server.registry
                await registry.CreateDeployment(
                    pb.CreateDeploymentRequest(
                        parent="models/gemma-3-270m",
                        deployment_id="q4",
                        deployment=res.Deployment(
                            version="models/gemma-3-270m/versions/q4-k-m", backend="inference", traffic_weight=0
                        ),
                    )
                )
                await eventually_async(
                    lambda: directory.route("gemma-3-270m@q4-k-m").backend_model == "gemma-3-270m-llamacpp",
                    interval=0.05,
                    ignoring=DomainError,
                )
                assert {directory.route("gemma-3-270m").backend_model for _ in range(200)} == {"gemma-3-270m"}

                # Weights split the traffic, and a change of weights applies live.
                current = await registry.GetDeployment(
                    pb.GetDeploymentRequest(name="models/gemma-3-270m/deployments/q4")
                )
                await registry.UpdateDeployment(
                    pb.UpdateDeploymentRequest(
                        deployment=res.Deployment(name=current.name, traffic_weight=300),
                        update_mask=FieldMask(paths=["traffic_weight"]),
                    )
                )
                await eventually_async(
                    lambda: directory._state.deployments[current.name].traffic_weight == 300,
                    interval=0.05,
                    ignoring=DomainError,
                )
                split = Counter(directory.route("gemma-3-270m").backend_model for _ in range(4000))
                share = split["gemma-3-270m-llamacpp"] / 4000
                assert 0.70 < share < 0.80, split  # 300 / (300 + 100)

                # Errors a client can act on.
                with pytest.raises(NotFound):
                    directory.route("no-such-model")
                with pytest.raises(NotFound):
                    directory.route("gemma-3-270m@v99")
                await registry.CreateModel(pb.CreateModelRequest(model_id="undeployed", model=res.Model()))
                await eventually_async(
                    lambda: "models/undeployed" in directory._state.models, interval=0.05, ignoring=DomainError
                )
                with pytest.raises(Unavailable):
                    directory.route("undeployed")
            finally:
                await feed.close()
                await channel.close()


async def test_auto_chat_prefers_the_instruction_tuned_model_over_the_base_model(tmp_path):
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            directory, feed = await following(channel, server.port)
            try:
                for capability in ("chat", "text-generation"):
                    ranked = directory.ranked(capability, "quality", ModelLoad())
                    assert ranked == ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]
                assert directory.ranked("embedding", "quality", ModelLoad()) == ["all-minilm-l6-v2"]
            finally:
                await feed.close()
                await channel.close()


async def test_the_directory_resumes_after_the_registry_restarts(tmp_path):
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as first:
            port = first.port
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            directory, feed = await following(channel, port)
        # The registry is down: routing goes on from what the directory knows.
        assert directory.route("all-minilm-l6-v2").backend == "inference/all-minilm-l6-v2"
        try:
            async with registry_server(url, data_dir, grpc_port=port) as second:
                await second.registry.CreateModel(pb.CreateModelRequest(model_id="after-restart", model=res.Model()))
                await eventually_async(
                    lambda: "models/after-restart" in directory._state.models,
                    interval=0.05,
                    ignoring=DomainError,
                    timeout=20,
                )
        finally:
            await feed.close()
            await channel.close()


async def test_the_router_rewrites_the_model_and_checks_the_registry_limits(tmp_path):
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            client = EnvoyBackendClient(f"127.0.0.1:{server.port}")
            resolver, feed = await following(client.channel, server.port)
            core = RouterCore(resolver, client, default_timeout=30)
            try:
                request = router_messages.GenerateTextRequest(
                    model="gemma-3-270m@q4-k-m", prompt="hi", config=options.GenerationConfig(max_tokens=16)
                )
                with pytest.raises(Unavailable):  # q4-k-m has no deployment in this registry
                    core.prepare(request, CallContext())
                request.model = "gemma-3-270m"
                prepared = core.prepare(request, CallContext())
                assert prepared.outgoing.model == "gemma-3-270m" and prepared.outgoing.prompt == "hi"
                assert prepared.route.backend == "inference/gemma-3-270m" and prepared.timeout == 30
                request.config.max_tokens = 9000
                with pytest.raises(InvalidArgument, match="limit of 8192"):
                    core.prepare(request, CallContext())
            finally:
                await feed.close()
                await core.close()
