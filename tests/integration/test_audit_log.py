"""The registry's audit log (issue 8): every administrative action, done or refused, with
who asked (the principal the gateway passes on), what, on which resource, when and how
it ended; read back newest first, in pages."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from support.databases import database
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
OPS = [("x-infermesh-principal", "apiKeys/ops")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def registry():
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            yield server.registry


async def test_admin_actions_done_or_refused_are_recorded_with_who_and_what(registry):
    model = res.Model(provider="openai", capabilities=["chat"])
    await registry.CreateModel(pb.CreateModelRequest(model_id="audited", model=model), metadata=OPS)
    with pytest.raises(grpc.aio.AioRpcError):
        await registry.CreateModel(pb.CreateModelRequest(model_id="audited", model=model), metadata=OPS)
    issued = await registry.CreateApiKey(pb.CreateApiKeyRequest(api_key=res.ApiKey(roles=[res.ApiKey.ROLE_USER])))
    await registry.RevokeApiKey(pb.RevokeApiKeyRequest(name=issued.api_key.name), metadata=OPS)
    await registry.ListModels(pb.ListModelsRequest())  # a read: not an administrative action

    events = (await registry.ListAuditEvents(pb.ListAuditEventsRequest(page_size=4))).audit_events
    assert [(e.principal, e.action, e.resource, e.result) for e in events] == [
        ("apiKeys/ops", "RevokeApiKey", issued.api_key.name, "OK"),
        ("anonymous", "CreateApiKey", issued.api_key.name, "OK"),
        ("apiKeys/ops", "CreateModel", "models/audited", "ALREADY_EXISTS"),
        ("apiKeys/ops", "CreateModel", "models/audited", "OK"),
    ]
    assert "already exists" in events[2].detail and events[0].time.seconds >= events[3].time.seconds > 0
    assert issued.secret not in str(events)  # the secret is never logged


async def test_the_log_reads_newest_first_in_pages(registry):
    for n in range(5):
        await registry.CreateModel(pb.CreateModelRequest(model_id=f"paged-{n}", model=res.Model(provider="openai")))
    seen, token = [], ""
    while True:
        page = await registry.ListAuditEvents(pb.ListAuditEventsRequest(page_size=2, page_token=token))
        seen += [e.sequence for e in page.audit_events]
        if not (token := page.next_page_token):
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) >= 5


async def test_services_inside_the_mesh_record_their_own_admin_actions(registry):
    event = res.AuditEvent(principal="apiKeys/ops", action="LoadModel", resource="models/m", result="OK")
    recorded = await registry.RecordAuditEvent(pb.RecordAuditEventRequest(audit_event=event))
    assert recorded.sequence > 0 and recorded.time.seconds > 0
    latest = (await registry.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1))).audit_events[0]
    assert (latest.sequence, latest.principal, latest.action, latest.resource) == (
        recorded.sequence,
        "apiKeys/ops",
        "LoadModel",
        "models/m",
    )
    # Who, what, which and how it ended are required.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await registry.RecordAuditEvent(pb.RecordAuditEventRequest(audit_event=res.AuditEvent(action="LoadModel")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
