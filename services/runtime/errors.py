"""Domain errors and their mapping to gRPC status (AIP-193).

Cores raise these; they know nothing about gRPC. One interceptor turns them into a
google.rpc.Status carrying exactly one ErrorInfo, whose metadata holds every value
named in the message.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "infermesh.dev"
# An error travels in the call's trailers, which are bounded (Envoy refuses more than
# 60 KiB and resets the stream: the caller sees UNAVAILABLE). Values a caller sent and
# an error names back (an id, a name) are cut to these lengths.
MAX_MESSAGE_CHARS = 4096
MAX_VALUE_CHARS = 1024


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DomainError(Exception):
    """An error a caller can act on. Subclasses fix the status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        **metadata: object,
    ) -> None:
        message = _clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retry_after = retry_after
        # Response headers that go with the error (REST clients see them as HTTP headers).
        self.headers = dict(headers or {})
        self.metadata = {key: _clip(str(value), MAX_VALUE_CHARS) for key, value in metadata.items()}

    @property
    def status_code(self) -> int:
        """The canonical code (google.rpc.Code), for code that does not speak gRPC."""
        return self.code.value[0]

    def to_status(self) -> status_pb2.Status:
        details = [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)]
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(DomainError):
    """A concurrency conflict, such as a stale etag: read again and retry."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(DomainError):
    """A failure the caller cannot fix, with a message that is safe to show."""

    code = grpc.StatusCode.INTERNAL


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED


def internal_status() -> status_pb2.Status:
    """The status for an unexpected failure: generic, so nothing internal leaks."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_of(error: BaseException) -> status_pb2.Status:
    """A failure as google.rpc.Status: a DomainError's own, a gRPC call's (its details
    from the trailers), or the generic internal one."""
    if isinstance(error, DomainError):
        return error.to_status()
    if isinstance(error, grpc.aio.AioRpcError):
        for key, value in error.trailing_metadata() or ():
            if key == STATUS_DETAILS_KEY:
                return status_pb2.Status.FromString(value)
        return status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    return internal_status()


def error_info(error: BaseException) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo a failure carries (empty when it has none)."""
    return status_info(status_of(error))


def status_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo in a google.rpc.Status (empty when it has none)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return error_details_pb2.ErrorInfo()


def status_retry_after(status: status_pb2.Status) -> float | None:
    """The delay a google.rpc.Status's RetryInfo asks for, in seconds (None: none)."""
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return retry.retry_delay.ToNanoseconds() / 1e9
    return None
