"""Seeding the registry at start: the local defaults always, a hosted provider's models
only when its key is configured (the key itself stored nowhere), idempotent across
restarts, and never overwriting what an operator changed."""

from __future__ import annotations

import pytest

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from support.databases import database
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
SECRET = "sk-test-never-stored-0123456789"


async def provider_models(registry, provider: str) -> set[str]:
    reply = await registry.ListModels(pb.ListModelsRequest(filter=f'provider = "{provider}"'))
    return {m.name for m in reply.models}


async def test_hosted_models_are_registered_only_with_a_key_and_seeding_is_idempotent():
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as plain:
            assert await provider_models(plain.registry, "openai") == set()
            # An operator's change...
            await plain.registry.UpdateModel(
                pb.UpdateModelRequest(model=res.Model(name="models/gemma-3-270m", display_name="Our Gemma"))
            )
        async with registry_server(url, data_dir, openai_api_key=SECRET) as keyed:
            registry = keyed.registry
            assert await provider_models(registry, "openai") == {
                "models/gpt-4o-mini",
                "models/text-embedding-3-small",
                "models/whisper-1",
                "models/tts-1",
            }
            assert await provider_models(registry, "gemini") == set()
            route = await registry.ListDeployments(pb.ListDeploymentsRequest(parent="models/gpt-4o-mini"))
            assert [(d.backend, d.traffic_weight) for d in route.deployments] == [("openai", 100)]
            gpt = await registry.GetModel(pb.GetModelRequest(name="models/gpt-4o-mini"))
            assert gpt.pricing.output_per_1k_tokens > gpt.pricing.input_per_1k_tokens > 0
            # ...survives seeding, and nothing is registered twice.
            gemma = await registry.GetModel(pb.GetModelRequest(name="models/gemma-3-270m"))
            assert gemma.display_name == "Our Gemma"
            versions = await registry.ListModelVersions(pb.ListModelVersionsRequest(parent="models/gemma-3-270m"))
            assert [v.name.rsplit("/", 1)[-1] for v in versions.model_versions] == ["bf16", "q4-k-m"]
        stored = b"".join(p.read_bytes() for p in data_dir.glob("registry.db*"))
        assert SECRET.encode() not in stored


async def test_a_hosted_model_named_like_a_local_one_does_not_replace_it():
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir, openai_api_key=SECRET, openai_text_model="gemma-3-270m") as server:
            gemma = await server.registry.GetModel(pb.GetModelRequest(name="models/gemma-3-270m"))
            assert gemma.provider == "local"
            deployments = await server.registry.ListDeployments(pb.ListDeploymentsRequest(parent=gemma.name))
            assert {d.backend for d in deployments.deployments} == {"inference"}
