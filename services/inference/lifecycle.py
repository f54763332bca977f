"""The ModelService: load, unload and status of models, loads and unloads as operations."""

from __future__ import annotations

from infermesh.inference.v1 import model_service_pb2 as pb
from infermesh.inference.v1 import model_service_pb2_grpc as pb_grpc
from infermesh_inference.repository import ModelRepository
from infermesh_inference.servicer import list_models, model_proto
from infermesh_runtime.operations import OperationStore, now


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, repository: ModelRepository, operations: OperationStore) -> None:
        self.repository = repository
        self.operations = operations

    def _start(self, model_id: str, verb: str, action):
        self.repository.entry(model_id)  # NOT_FOUND now, not inside the operation
        metadata = pb.ModelOperationMetadata(model=model_id, verb=verb, stage="queued", create_time=now())

        async def work(publish):
            def progress(stage: str, percent: float) -> None:
                metadata.stage, metadata.progress_percent = stage, percent
                publish()

            await action(progress)
            return model_proto(self.repository.entry(model_id))

        return self.operations.start(metadata, work)

    async def LoadModel(self, request, context):
        return self._start(request.model, "load", lambda progress: self.repository.load(request.model, progress))

    async def UnloadModel(self, request, context):
        return self._start(
            request.model, "unload", lambda progress: self.repository.unload(request.model, "requested", progress)
        )

    async def GetModel(self, request, context):
        return model_proto(self.repository.entry(request.model))

    async def ListModels(self, request, context):
        return list_models(self.repository, request)
