"""RegistryService: protos in, store calls, protos out."""

from __future__ import annotations

import time

from google.protobuf import empty_pb2

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.registry.api_keys import ApiKeyStore
from services.registry.artifacts import ArtifactStore
from services.registry.audit import AuditLog, audited
from services.registry.store import RegistryStore
from services.runtime.errors import AlreadyExists
from services.runtime.operations import OperationStore, now

FEED_BATCH = 256
BOOKMARK_SECONDS = 30.0  # well inside Envoy's 300 s stream idle timeout


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        operations: OperationStore,
        watch_poll_seconds: float,
        api_keys: ApiKeyStore,
        audit: AuditLog,
    ) -> None:
        self.store = store
        self.api_keys = api_keys
        self.audit = audit
        self.artifacts = artifacts
        self.operations = operations
        self._poll = watch_poll_seconds

    @audited(lambda q, r: f"models/{q.model_id}")
    async def CreateModel(self, request, context):
        return await self.store.create_model(request.model_id, request.model)

    async def GetModel(self, request, context):
        return await self.store.get_model(request.name)

    async def ListModels(self, request, context):
        page = await self.store.list_models(request.page_size, request.page_token, request.filter, request.order_by)
        return pb.ListModelsResponse(
            models=page.items, next_page_token=page.next_page_token, total_size=page.total_size
        )

    @audited(lambda q, r: q.model.name)
    async def UpdateModel(self, request, context):
        return await self.store.update_model(request.model, request.update_mask)

    @audited(lambda q, r: q.name)
    async def DeleteModel(self, request, context):
        for version in await self.store.delete_model(request.name, request.etag, request.force):
            self.artifacts.discard(version.artifact_uri)
        return empty_pb2.Empty()

    @audited(lambda q, r: f"{q.parent}/versions/{q.model_version_id}")
    async def CreateModelVersion(self, request, context):
        return await self.store.create_version(request.parent, request.model_version_id, request.model_version)

    async def GetModelVersion(self, request, context):
        return await self.store.get_version(request.name)

    async def ListModelVersions(self, request, context):
        page = await self.store.list_versions(
            request.parent, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListModelVersionsResponse(
            model_versions=page.items, next_page_token=page.next_page_token, total_size=page.total_size
        )

    @audited(lambda q, r: q.model_version.name)
    async def UpdateModelVersion(self, request, context):
        return await self.store.update_version(request.model_version, request.update_mask)

    @audited(lambda q, r: q.name)
    async def DeleteModelVersion(self, request, context):
        version = await self.store.delete_version(request.name, request.etag, request.force)
        self.artifacts.discard(version.artifact_uri)
        return empty_pb2.Empty()

    @audited(lambda q, r: f"{q.parent}/deployments/{q.deployment_id}")
    async def CreateDeployment(self, request, context):
        return await self.store.create_deployment(request.parent, request.deployment_id, request.deployment)

    async def GetDeployment(self, request, context):
        return await self.store.get_deployment(request.name)

    async def ListDeployments(self, request, context):
        page = await self.store.list_deployments(
            request.parent, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListDeploymentsResponse(
            deployments=page.items, next_page_token=page.next_page_token, total_size=page.total_size
        )

    @audited(lambda q, r: q.deployment.name)
    async def UpdateDeployment(self, request, context):
        return await self.store.update_deployment(request.deployment, request.update_mask)

    @audited(lambda q, r: q.name)
    async def DeleteDeployment(self, request, context):
        await self.store.delete_deployment(request.name, request.etag)
        return empty_pb2.Empty()

    @audited(lambda q, r: f"{q.parent}/versions/{q.model_version_id}")
    async def ImportModelVersion(self, request, context):
        name = f"{request.parent}/versions/{request.model_version_id}"
        await self.store.get_model(request.parent)  # NOT_FOUND now, not inside the operation
        if await self.store.version_exists(name):
            raise AlreadyExists(f"{name} already exists", reason="RESOURCE_EXISTS", name=name)
        self.artifacts.check_source(request.source_uri)
        metadata = pb.ImportModelVersionMetadata(
            version=name, source_uri=request.source_uri, stage="queued", create_time=now()
        )
        model_id = request.parent.removeprefix("models/")

        async def work(publish):
            def progress(copied: int, total: int) -> None:
                metadata.stage, metadata.bytes_copied, metadata.bytes_total = "copying", copied, total
                metadata.progress_percent = 100 * copied / total if total else 0
                publish()

            artifact = await self.artifacts.import_artifact(
                request.source_uri, model_id, request.model_version_id, request.sha256, progress
            )
            metadata.stage = "registering"
            publish()
            version = res.ModelVersion()
            version.CopyFrom(request.model_version)
            version.artifact_uri, version.artifact_sha256 = artifact.uri, artifact.sha256
            version.artifact_size_bytes = artifact.size_bytes
            try:
                created = await self.store.create_version(request.parent, request.model_version_id, version)
            except BaseException:
                self.artifacts.remove(model_id, request.model_version_id)
                raise
            metadata.stage, metadata.progress_percent = "done", 100
            return created

        return self.operations.start(metadata, work)

    @audited(lambda q, r: r.api_key.name if r is not None else f"apiKeys/{q.api_key_id or '?'}")
    async def CreateApiKey(self, request, context):
        key, secret = await self.api_keys.create(request.api_key_id, request.api_key)
        return pb.CreateApiKeyResponse(api_key=key, secret=secret)

    async def GetApiKey(self, request, context):
        return await self.api_keys.get(request.name)

    async def ListApiKeys(self, request, context):
        keys, next_token = await self.api_keys.list(request.page_size, request.page_token)
        return pb.ListApiKeysResponse(api_keys=keys, next_page_token=next_token)

    @audited(lambda q, r: q.name)
    async def RevokeApiKey(self, request, context):
        return await self.api_keys.revoke(request.name)

    async def ListAuditEvents(self, request, context):
        events, next_token = await self.audit.list(request.page_size, request.page_token)
        return pb.ListAuditEventsResponse(audit_events=events, next_page_token=next_token)

    async def AuthenticateApiKey(self, request, context):
        return await self.api_keys.authenticate(request.secret)

    async def RecordAuditEvent(self, request, context):
        e = request.audit_event
        return await self.audit.record(e.principal, e.action, e.resource, e.result, e.detail)

    async def GetOperation(self, request, context):
        return self.operations.get(request.name)

    async def WatchChanges(self, request, context):
        after = request.after_sequence
        bookmarked, quiet_since = False, time.monotonic()
        while True:
            signal = self.store.next_change()
            batch = await self.store.changes_after(after, FEED_BATCH)
            for change in batch:
                yield change
                after = change.sequence
            if batch:
                quiet_since = time.monotonic()
            if len(batch) == FEED_BATCH:
                continue
            if not bookmarked or time.monotonic() - quiet_since >= BOOKMARK_SECONDS:
                yield res.Change(kind=res.Change.KIND_BOOKMARK, sequence=after)
                bookmarked, quiet_since = True, time.monotonic()
            await self.store.wait(signal, self._poll)
