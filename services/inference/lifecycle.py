"""The ModelService: load, unload and status of models, loads and unloads as operations,
and the server's resource use.

Loads and unloads are administrative actions: each is recorded in the registry's audit
log twice, when asked for (or refused) and when its operation ends, with who asked."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from infermesh.inference.v1 import model_service_pb2 as pb
from infermesh.inference.v1 import model_service_pb2_grpc as pb_grpc
from services.inference.repository import ModelRepository
from services.inference.resources import ResourceMonitor, ResourceReading
from services.inference.servicer import list_models, model_proto
from services.runtime.operations import OperationStore, now
from services.runtime.registry_client import RegistryClient, outcome, principal_of


def resources_proto(reading: ResourceReading) -> pb.ServerResources:
    read_time = Timestamp()
    read_time.FromNanoseconds(int(reading.read_time * 1e9))
    return pb.ServerResources(
        read_time=read_time,
        cpu_cores_used=reading.cpu.cores,
        cpu_window_seconds=reading.cpu.window_seconds,
        cpu_seconds=reading.cpu.cpu_seconds,
        cpu_count=reading.cpu_count,
        resident_memory_bytes=reading.resident_memory_bytes,
        thread_count=reading.thread_count,
        memory_total_bytes=reading.memory_total_bytes,
        memory_available_bytes=reading.memory_available_bytes,
        device=reading.device,
        model_memory_bytes=reading.model_memory_bytes,
        accelerators=[
            pb.Accelerator(
                index=a.index,
                name=a.name,
                uuid=a.uuid,
                utilization=a.utilization,
                memory_used_bytes=a.memory_used_bytes,
                memory_total_bytes=a.memory_total_bytes,
                allocated_bytes=a.allocated_bytes,
            )
            for a in reading.accelerators
        ],
    )


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        operations: OperationStore,
        resources: ResourceMonitor,
        audit: RegistryClient | None = None,
    ) -> None:
        self.repository = repository
        self.operations = operations
        self.resources = resources
        self.audit = audit

    async def _record(self, principal: str, action: str, model_id: str, result: tuple[str, str]) -> None:
        if self.audit is not None:
            await self.audit.record(principal, action, f"models/{model_id}", *result)

    async def _start(self, context, model_id: str, action: str, verb: str, work_on):
        principal = principal_of(context)
        try:
            self.repository.entry(model_id)  # NOT_FOUND now, not inside the operation
        except Exception as error:
            await self._record(principal, action, model_id, outcome(error))
            raise
        metadata = pb.ModelOperationMetadata(model=model_id, verb=verb, stage="queued", create_time=now())

        async def work(publish):
            def progress(stage: str, percent: float) -> None:
                metadata.stage, metadata.progress_percent = stage, percent
                publish()

            try:
                await work_on(progress)
            except asyncio.CancelledError:
                await self._record(principal, action, model_id, ("CANCELLED", f"{verb} cancelled"))
                raise
            except Exception as error:
                await self._record(principal, action, model_id, outcome(error))
                raise
            await self._record(principal, action, model_id, outcome(None, f"{verb} done"))
            return model_proto(self.repository.entry(model_id))

        # Recorded before the operation starts, so the log reads in order.
        await self._record(principal, action, model_id, outcome(None, f"{verb} requested"))
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

    async def GetServerResources(self, request, context):
        return resources_proto(await asyncio.to_thread(self.resources.read))
