"""Long-running operations (AIP-151): an in-memory store and the google.longrunning.Operations
service, shared by every service that starts slow work (model loads, downloads, index builds)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, message, timestamp_pb2

from services.runtime.errors import DomainError, InvalidArgument, NotFound, internal_status

DEFAULT_PAGE_SIZE = 50


@dataclass
class _Tracked:
    operation: operations_pb2.Operation
    metadata: message.Message
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class OperationStore:
    """Operations by name; finished ones stay listable until deleted (bounded by `keep`)."""

    def __init__(self, keep: int = 1000) -> None:
        self._ops: dict[str, _Tracked] = {}
        self._keep = keep

    def start(
        self,
        metadata: message.Message,
        work: Callable[[Callable[[], None]], Awaitable[message.Message]],
    ) -> operations_pb2.Operation:
        """Run `work(publish)` in the background; `publish()` re-reads the (mutable) metadata.
        The operation ends with work's result as its response, or its error."""
        name = f"operations/{uuid.uuid4().hex}"
        tracked = _Tracked(operations_pb2.Operation(name=name), metadata)
        self._ops[name] = tracked
        self._trim()
        self._publish(tracked)

        async def run() -> None:
            try:
                result = await work(lambda: self._publish(tracked))
                tracked.operation.response.Pack(result)
            except DomainError as exc:
                tracked.operation.error.CopyFrom(exc.to_status())
            except asyncio.CancelledError:
                tracked.operation.error.code, tracked.operation.error.message = 1, "cancelled"
            except Exception:  # noqa: BLE001 - the operation reports a generic error
                tracked.operation.error.CopyFrom(internal_status())
            finally:
                if hasattr(metadata, "end_time"):
                    metadata.end_time.GetCurrentTime()
                self._publish(tracked)
                tracked.operation.done = True
                tracked.done.set()

        tracked.task = asyncio.create_task(run(), name=name)
        return self.get(name)

    def get(self, name: str) -> operations_pb2.Operation:
        tracked = self._ops.get(name)
        if tracked is None:
            raise NotFound(f"operation {name!r} does not exist", reason="OPERATION_NOT_FOUND", operation=name)
        copy = operations_pb2.Operation()
        copy.CopyFrom(tracked.operation)
        return copy

    async def wait(self, name: str, timeout: float | None) -> operations_pb2.Operation:
        tracked = self._ops.get(name)
        if tracked is None:
            return self.get(name)
        try:
            await asyncio.wait_for(asyncio.shield(tracked.done.wait()), timeout)
        except TimeoutError:
            pass
        return self.get(name)

    def list(self, page_size: int, page_token: str) -> tuple[list[operations_pb2.Operation], str]:
        names = list(self._ops)
        start = 0
        if page_token:
            if not page_token.isdigit():
                raise InvalidArgument("page_token is not one this server issued", reason="INVALID_PAGE_TOKEN")
            start = int(page_token)
        end = start + (page_size or DEFAULT_PAGE_SIZE)
        return [self.get(n) for n in names[start:end]], (str(end) if end < len(names) else "")

    def cancel(self, name: str) -> None:
        self.get(name)
        task = self._ops[name].task
        if task is not None and not task.done():
            task.cancel()

    def delete(self, name: str) -> None:
        self.get(name)
        del self._ops[name]

    def _publish(self, tracked: _Tracked) -> None:
        tracked.operation.metadata.Pack(tracked.metadata)

    def _trim(self) -> None:
        finished = [n for n, t in self._ops.items() if t.operation.done]
        for name in finished[: max(0, len(self._ops) - self._keep)]:
            del self._ops[name]


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


SERVICE = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
# The wheel's operations_pb2_grpc imports a second copy of operations.proto
# (operations_proto_pb2) that clashes with operations_pb2 in the descriptor pool, so
# the handlers and the client stub are built here from operations_pb2's messages.
_METHODS = {
    "GetOperation": (operations_pb2.GetOperationRequest, operations_pb2.Operation),
    "ListOperations": (operations_pb2.ListOperationsRequest, operations_pb2.ListOperationsResponse),
    "WaitOperation": (operations_pb2.WaitOperationRequest, operations_pb2.Operation),
    "CancelOperation": (operations_pb2.CancelOperationRequest, empty_pb2.Empty),
    "DeleteOperation": (operations_pb2.DeleteOperationRequest, empty_pb2.Empty),
}


def add_operations_servicer_to_server(servicer: OperationsServicer, server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in _METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class OperationsStub:
    """A client for google.longrunning.Operations on a grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        for name, (req, resp) in _METHODS.items():
            method = channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=req.SerializeToString, response_deserializer=resp.FromString
            )
            setattr(self, name, method)


class OperationsServicer:
    def __init__(self, store: OperationStore) -> None:
        self.store = store

    async def GetOperation(self, request, context):
        return self.store.get(request.name)

    async def ListOperations(self, request, context):
        operations, token = self.store.list(request.page_size, request.page_token)
        return operations_pb2.ListOperationsResponse(operations=operations, next_page_token=token)

    async def WaitOperation(self, request, context):
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining) if timeout is not None else remaining
        return await self.store.wait(request.name, timeout)

    async def CancelOperation(self, request, context):
        self.store.cancel(request.name)
        return empty_pb2.Empty()

    async def DeleteOperation(self, request, context):
        self.store.delete(request.name)
        return empty_pb2.Empty()
