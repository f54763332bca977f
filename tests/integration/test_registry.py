"""The model registry's API, run twice: on SQLite (the embedded default) and on a real
PostgreSQL 15 server started for the test. Each test uses model ids of its own, so
tests share one registry per database."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.protobuf.field_mask_pb2 import FieldMask

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from support.databases import DATABASES, database
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=DATABASES)
async def registry(request):
    with database(request.param) as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            yield server.registry


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code()


def chat_model(**fields) -> res.Model:
    return res.Model(provider="openai", capabilities=["chat", "text-generation"], **fields)


async def test_the_default_models_are_registered_with_versions_and_deployments(registry):
    models = await registry.ListModels(pb.ListModelsRequest(filter='provider = "local"'))
    names = {m.name for m in models.models}
    assert {"models/gemma-3-270m", "models/all-minilm-l6-v2"} <= names
    versions = await registry.ListModelVersions(pb.ListModelVersionsRequest(parent="models/gemma-3-270m"))
    defaults = [v.name for v in versions.model_versions if v.is_default]
    assert defaults == ["models/gemma-3-270m/versions/bf16"]
    assert {v.runtime.runtime for v in versions.model_versions} == {"transformers", "llama.cpp"}
    deployments = await registry.ListDeployments(pb.ListDeploymentsRequest(parent="models/gemma-3-270m"))
    assert [(d.version, d.backend, d.traffic_weight) for d in deployments.deployments] == [
        ("models/gemma-3-270m/versions/bf16", "inference", 100)
    ]


async def test_create_get_and_the_errors_aip_prescribes(registry):
    created = await registry.CreateModel(
        pb.CreateModelRequest(model_id="crud-a", model=chat_model(display_name="A", labels={"env": "prod"}))
    )
    assert created.name == "models/crud-a" and created.etag
    assert created.create_time.seconds > 0 and created.update_time == created.create_time
    assert await registry.GetModel(pb.GetModelRequest(name="models/crud-a")) == created
    again = registry.CreateModel(pb.CreateModelRequest(model_id="crud-a", model=chat_model()))
    assert await code_of(again) == grpc.StatusCode.ALREADY_EXISTS
    assert await code_of(registry.GetModel(pb.GetModelRequest(name="models/nope"))) == grpc.StatusCode.NOT_FOUND
    bad_id = registry.CreateModel(pb.CreateModelRequest(model_id="Bad Id!", model=chat_model()))
    assert await code_of(bad_id) == grpc.StatusCode.INVALID_ARGUMENT
    self_fallback = registry.CreateModel(
        pb.CreateModelRequest(model_id="crud-b", model=chat_model(fallbacks=["models/crud-b"]))
    )
    assert await code_of(self_fallback) == grpc.StatusCode.INVALID_ARGUMENT


async def test_lists_page_filter_and_order(registry):
    for i in range(7):
        model = chat_model(display_name=f"Pager {i}", quality_rank=i + 1, labels={"suite": "pager"})
        await registry.CreateModel(pb.CreateModelRequest(model_id=f"pager-{i}", model=model))
    query = {"filter": 'labels.suite = "pager" AND quality_rank >= 2', "order_by": "quality_rank desc"}
    seen, token, pages = [], "", 0
    while True:
        page = await registry.ListModels(pb.ListModelsRequest(page_size=4, page_token=token, **query))
        assert page.total_size == 6
        seen += [m.name for m in page.models]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert seen == [f"models/pager-{i}" for i in range(6, 0, -1)]
    first = await registry.ListModels(pb.ListModelsRequest(page_size=2, **query))
    other_query = registry.ListModels(pb.ListModelsRequest(page_token=first.next_page_token, filter="provider = x"))
    assert await code_of(other_query) == grpc.StatusCode.INVALID_ARGUMENT
    forged = registry.ListModels(pb.ListModelsRequest(page_token="not-a-token"))
    assert await code_of(forged) == grpc.StatusCode.INVALID_ARGUMENT
    bad_filter = registry.ListModels(pb.ListModelsRequest(filter="provider = = x"))
    assert await code_of(bad_filter) == grpc.StatusCode.INVALID_ARGUMENT
    unknown_field = registry.ListModels(pb.ListModelsRequest(filter="secret = 1"))
    assert await code_of(unknown_field) == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_changes_only_the_masked_fields_and_checks_the_etag(registry):
    model = chat_model(display_name="Before", description="kept", labels={"env": "dev"})
    created = await registry.CreateModel(pb.CreateModelRequest(model_id="upd-a", model=model))
    change = res.Model(name=created.name, display_name="After", description="ignored", etag=created.etag)
    updated = await registry.UpdateModel(
        pb.UpdateModelRequest(model=change, update_mask=FieldMask(paths=["display_name"]))
    )
    assert (updated.display_name, updated.description) == ("After", "kept")
    assert updated.etag != created.etag and updated.create_time == created.create_time
    stale = registry.UpdateModel(
        pb.UpdateModelRequest(model=res.Model(name=created.name, display_name="X", etag=created.etag))
    )
    assert await code_of(stale) == grpc.StatusCode.ABORTED
    # No mask: the fields the request sets (AIP-134).
    relabelled = await registry.UpdateModel(
        pb.UpdateModelRequest(model=res.Model(name=created.name, labels={"env": "prod"}))
    )
    assert relabelled.labels == {"env": "prod"} and relabelled.display_name == "After"
    bad_path = registry.UpdateModel(
        pb.UpdateModelRequest(model=res.Model(name=created.name), update_mask=FieldMask(paths=["no_such_field"]))
    )
    assert await code_of(bad_path) == grpc.StatusCode.INVALID_ARGUMENT
    missing = registry.UpdateModel(pb.UpdateModelRequest(model=res.Model(name="models/upd-nope", display_name="x")))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_a_model_has_exactly_one_default_version(registry):
    model = await registry.CreateModel(pb.CreateModelRequest(model_id="ver-a", model=chat_model()))
    v1 = await registry.CreateModelVersion(
        pb.CreateModelVersionRequest(parent=model.name, model_version_id="v1", model_version=res.ModelVersion())
    )
    assert v1.is_default  # the first version is the default
    v2 = await registry.CreateModelVersion(
        pb.CreateModelVersionRequest(
            parent=model.name, model_version_id="v2", model_version=res.ModelVersion(is_default=True)
        )
    )
    versions = await registry.ListModelVersions(pb.ListModelVersionsRequest(parent=model.name))
    assert [v.name for v in versions.model_versions if v.is_default] == [v2.name]
    undefault = registry.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model_version=res.ModelVersion(name=v2.name, is_default=False), update_mask=FieldMask(paths=["is_default"])
        )
    )
    assert await code_of(undefault) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(registry.DeleteModelVersion(pb.DeleteModelVersionRequest(name=v2.name))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    back = await registry.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model_version=res.ModelVersion(name=v1.name, is_default=True), update_mask=FieldMask(paths=["is_default"])
        )
    )
    assert back.is_default
    assert not (await registry.GetModelVersion(pb.GetModelVersionRequest(name=v2.name))).is_default
    no_parent = registry.CreateModelVersion(
        pb.CreateModelVersionRequest(parent="models/ver-none", model_version_id="v1", model_version=res.ModelVersion())
    )
    assert await code_of(no_parent) == grpc.StatusCode.NOT_FOUND


async def test_deployments_reference_versions_of_their_own_model_and_deletes_cascade_only_when_forced(registry):
    model = await registry.CreateModel(pb.CreateModelRequest(model_id="dep-a", model=chat_model()))
    version = await registry.CreateModelVersion(
        pb.CreateModelVersionRequest(parent=model.name, model_version_id="v1", model_version=res.ModelVersion())
    )
    deployment = await registry.CreateDeployment(
        pb.CreateDeploymentRequest(
            parent=model.name,
            deployment_id="main",
            deployment=res.Deployment(version=version.name, backend="inference", traffic_weight=95),
        )
    )
    assert deployment.name == "models/dep-a/deployments/main"
    implied = await registry.CreateDeployment(
        pb.CreateDeploymentRequest(parent=model.name, deployment_id="implied", deployment=res.Deployment(backend="x"))
    )
    assert implied.version == version.name  # no version named: the default one
    await registry.DeleteDeployment(pb.DeleteDeploymentRequest(name=implied.name, etag=implied.etag))
    foreign = registry.CreateDeployment(
        pb.CreateDeploymentRequest(
            parent=model.name,
            deployment_id="x",
            deployment=res.Deployment(version="models/gemma-3-270m/versions/bf16", backend="inference"),
        )
    )
    assert await code_of(foreign) == grpc.StatusCode.INVALID_ARGUMENT
    ghost = registry.CreateDeployment(
        pb.CreateDeploymentRequest(
            parent=model.name,
            deployment_id="y",
            deployment=res.Deployment(version="models/dep-a/versions/v9", backend="inference"),
        )
    )
    assert await code_of(ghost) == grpc.StatusCode.NOT_FOUND
    deployed = registry.DeleteModelVersion(pb.DeleteModelVersionRequest(name=version.name))
    assert await code_of(deployed) == grpc.StatusCode.FAILED_PRECONDITION
    has_children = registry.DeleteModel(pb.DeleteModelRequest(name=model.name))
    assert await code_of(has_children) == grpc.StatusCode.FAILED_PRECONDITION
    stale = registry.DeleteModel(pb.DeleteModelRequest(name=model.name, force=True, etag="stale"))
    assert await code_of(stale) == grpc.StatusCode.ABORTED
    await registry.DeleteModel(pb.DeleteModelRequest(name=model.name, force=True))
    gone = [
        registry.GetModel(pb.GetModelRequest(name=model.name)),
        registry.GetModelVersion(pb.GetModelVersionRequest(name=version.name)),
        registry.GetDeployment(pb.GetDeploymentRequest(name=deployment.name)),
    ]
    assert [await code_of(call) for call in gone] == [grpc.StatusCode.NOT_FOUND] * 3


async def test_the_feed_replays_every_change_and_streams_new_ones(registry):
    state: dict[str, object] = {}
    last = 0
    call = registry.WatchChanges(pb.WatchChangesRequest())
    received: asyncio.Queue = asyncio.Queue()

    async def follow() -> None:
        async for change in call:
            await received.put(change)

    follower = asyncio.create_task(follow())
    try:
        # Everything so far replays in sequence order, then a bookmark says it is all there.
        while True:
            change = await asyncio.wait_for(received.get(), 5.0)
            if change.kind == res.Change.KIND_BOOKMARK:
                assert change.sequence == last and not change.WhichOneof("resource")
                break
            assert change.sequence > last
            last = change.sequence
            which = change.WhichOneof("resource")
            if change.kind == res.Change.KIND_DELETED:
                state.pop(change.name, None)
            else:
                state[change.name] = getattr(change, which)
        listed = await registry.ListModels(pb.ListModelsRequest(page_size=1000))
        assert {n for n in state if n.count("/") == 1} == {m.name for m in listed.models}
        # A new change arrives as it happens.
        created = await registry.CreateModel(pb.CreateModelRequest(model_id="feed-a", model=chat_model()))
        change = await asyncio.wait_for(received.get(), 5.0)
        assert (change.kind, change.name, change.model) == (res.Change.KIND_CREATED, created.name, created)
        assert change.sequence > last
    finally:
        call.cancel()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
