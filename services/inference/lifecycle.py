"""The ModelService: load, unload and status of models, loads and unloads as operations.

Loads and unloads are administrative actions: each is recorded in the registry's audit
log twice, when asked for (or refused) and when its operation ends, with who asked."""

from __future__ import annotations

import asyncio

from google.rpc import code_pb2

from infermesh.inference.v1 import model_service_pb2 as pb
from infermesh.inference.v1 import model_service_pb2_grpc as pb_grpc
from infermesh_inference.repository import ModelRepository
from infermesh_inference.servicer import list_models, model_proto
from infermesh_runtime.errors import status_of
from infermesh_runtime.operations import OperationStore, now
from infermesh_runtime.registry_client import RegistryClient, principal_of


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(
        self, repository: ModelRepository, operations: OperationStore, audit: RegistryClient | None = None
    ) -> None:
        self.repository = repository
        self.operations = operations
        self.audit = audit

    async def _record(self, principal: str, action: str, model_id: str, error: Exception | None, detail: str) -> None:
        result, message = "OK", detail
        if error is not None:
            status = status_of(error)
            result, message = code_pb2.Code.Name(status.code), status.message
        await self.audit_result(principal, action, model_id, result, message)

    async def audit_result(self, principal: str, action: str, model_id: str, result: str, detail: str) -> None:
        if self.audit is not None:
            await self.audit.record(principal, action, f"models/{model_id}", result, detail)

    async def _start(self, context, model_id: str, action: str, verb: str, work_on):
        principal = principal_of(context)
        try:
            self.repository.entry(model_id)  # NOT_FOUND now, not inside the operation
        except Exception as error:
            await self._record(principal, action, model_id, error, "")
            raise
        metadata = pb.ModelOperationMetadata(model=model_id, verb=verb, stage="queued", create_time=now())

        async def work(publish):
            def progress(stage: str, percent: float) -> None:
                metadata.stage, metadata.progress_percent = stage, percent
                publish()

            try:
                await work_on(progress)
            except asyncio.CancelledError:
                await self.audit_result(principal, action, model_id, "CANCELLED", f"{verb} cancelled")
                raise
            except Exception as error:
                await self._record(principal, action, model_id, error, "")
                raise
            await self._record(principal, action, model_id, None, f"{verb} done")
            return model_proto(self.repository.entry(model_id))

        # Recorded before the operation starts, so the log reads in order.
        await self._record(principal, action, model_id, None, f"{verb} requested")
        return self.operations.start(metadata, work)

    async def LoadModel(self, request, context):
        load = lambda progress: self.repository.load(request.model, progress)  # noqa: E731
        return await self._start(context, request.model, "LoadModel", "load", load)

    async def UnloadModel(self, request, context):
        unload = lambda progress: self.repository.unload(request.model, "requested", progress)  # noqa: E731
        return await self._start(context, request.model, "UnloadModel", "unload", unload)

    async def GetModel(self, request, context):
        return model_proto(self.repository.entry(request.model))

    async def ListModels(self, request, context):
        return list_models(self.repository, request)
