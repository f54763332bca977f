"""How the core reaches backends, and how a backend's failure reaches the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from services.router.core.rpcs import Rpc
from services.runtime.errors import DomainError, status_info, status_retry_after

# Failures after which another backend may well answer: down, refusing for now, too slow.
RETRYABLE = {code_pb2.UNAVAILABLE, code_pb2.RESOURCE_EXHAUSTED, code_pb2.DEADLINE_EXCEEDED}


class BackendClient(Protocol):
    """Calls a backend of the mesh (by its catalog name) with a deadline in seconds; a
    failure is a BackendError."""

    async def call(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> Message: ...

    def stream(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> AsyncIterator[Message]:
        """The streaming form of `rpc`; leaving the iteration early cancels the call."""
        ...

    async def close(self) -> None: ...


class BackendError(DomainError):
    """A backend's failure as its google.rpc.Status says it (code, message, details): it
    reaches the caller unchanged, and the core can tell a caller's error from an outage."""

    def __init__(self, status: status_pb2.Status) -> None:
        info = status_info(status)
        super().__init__(status.message, reason=info.reason, retry_after=status_retry_after(status))
        self.metadata = dict(info.metadata)
        self.status = status

    @property
    def status_code(self) -> int:
        return self.status.code

    def to_status(self) -> status_pb2.Status:
        return self.status


def code_of(error: BaseException) -> int | None:
    """A failure's canonical code (google.rpc.Code); None for an unexpected error."""
    return error.status_code if isinstance(error, DomainError) else None
