"""Server interceptors: input validation and error mapping, and Prometheus metrics.

grpc.aio interceptors cannot see a call's outcome through `continuation`, so each one
wraps the method handler's behaviour (unary or server-streaming) instead. A method's
handler is the same object for every call, so its wrapped version is built once per
method and reused: interception costs one dictionary lookup per call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import protovalidate
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from services.runtime.errors import DOMAIN, STATUS_DETAILS_KEY, DomainError, InvalidArgument, internal_status
from services.runtime.well_known import invalid_times

log = logging.getLogger(__name__)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's unary or server-streaming behaviour, once per method."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        raise NotImplementedError

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        raise NotImplementedError

    def wrap_deserializer(self, method: str, deserializer: Deserializer | None) -> Deserializer | None:
        return deserializer

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(method, handler.unary_unary),
                self.wrap_deserializer(method, handler.request_deserializer),
                handler.response_serializer,
            )
        elif handler.unary_stream:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(method, handler.unary_stream),
                self.wrap_deserializer(method, handler.request_deserializer),
                handler.response_serializer,
            )
        else:
            wrapped = handler  # client-streaming methods (reflection) pass through untouched
        self._wrapped[method] = wrapped
        return wrapped


def _field_path(violation) -> str:
    """`models[0]`-style path to the violating field; "" for a rule on the whole message."""
    path = getattr(violation, "field", None)
    if path is None or not path.elements:
        return ""
    return ".".join(e.field_name for e in path.elements)


def validation_status(error: protovalidate.ValidationError) -> status_pb2.Status:
    """INVALID_ARGUMENT listing every violated constraint (BadRequest) plus ErrorInfo."""
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=_field_path(v.proto), description=v.proto.message)
        for v in error.violations
    ]
    message = "; ".join(f"{fv.field}: {fv.description}" if fv.field else fv.description for fv in violations)
    info = error_details_pb2.ErrorInfo(
        reason="INVALID_REQUEST_FIELDS",
        domain=DOMAIN,
        metadata={"fields": ",".join(fv.field for fv in violations)},
    )
    details = []
    for detail_message in (info, error_details_pb2.BadRequest(field_violations=violations)):
        detail = any_pb2.Any()
        detail.Pack(detail_message)
        details.append(detail)
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=details)


async def abort_with_status(method: str, context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the call with the status `exc` stands for (see ErrorInterceptor)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        # An upstream service's error passes through with its code and rich details.
        details = tuple((k, v) for k, v in exc.trailing_metadata() or () if k == STATUS_DETAILS_KEY)
        await context.abort(exc.code(), exc.details() or "", trailing_metadata=details)
    if isinstance(exc, protovalidate.ValidationError):
        status = validation_status(exc)
    elif isinstance(exc, DomainError):
        status = exc.to_status()
    else:
        log.exception("unhandled error in %s", method)
        status = internal_status()
    grpc_status = rpc_status.to_status(status)
    trailers = tuple(grpc_status.trailing_metadata)
    if isinstance(exc, DomainError) and exc.retry_after is not None:
        # HTTP's Retry-After too (Envoy passes it to REST clients): a retry loop that
        # knows nothing of google.rpc.RetryInfo still waits long enough.
        trailers += (("retry-after", str(max(1, math.ceil(exc.retry_after)))),)
    if isinstance(exc, DomainError):
        trailers += tuple(exc.headers.items())
    await context.abort(grpc_status.code, grpc_status.details, trailing_metadata=trailers)


@dataclass(frozen=True)
class Undecodable:
    """What a request's deserializer returns for bytes that are not its message: raising
    there, grpc would answer UNKNOWN with the exception's text."""

    message_type: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            f"the request is not a valid {self.message_type} message",
            reason="MALFORMED_REQUEST",
            message_type=self.message_type,
        )


def _validate(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise request.error()
    if problems := invalid_times(request):
        raise InvalidArgument(
            "; ".join(f"{path}: {problem}" for path, problem in problems),
            reason="INVALID_REQUEST_FIELDS",
            fields=",".join(path for path, _ in problems),
        )
    protovalidate.validate(request)


class ErrorInterceptor(WrappingInterceptor):
    """Validates requests against their protovalidate rules and maps exceptions to status.

    Bytes that do not decode as the request, and Timestamp or Duration values outside
    the protobuf spec's range, → INVALID_ARGUMENT too; DomainError → its
    canonical code with ErrorInfo; an upstream call's error → the same status; anything
    else → a generic INTERNAL (the traceback goes to the log, never to the caller).
    """

    def wrap_deserializer(self, method: str, deserializer: Deserializer | None) -> Deserializer | None:
        if deserializer is None:
            return None
        message_class = getattr(deserializer, "__self__", None)
        message_type = message_class.DESCRIPTOR.full_name if hasattr(message_class, "DESCRIPTOR") else "request"

        def deserialize(data: bytes) -> Any:
            try:
                return deserializer(data)
            except DecodeError:
                return Undecodable(message_type)

        return deserialize

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request, context):
            try:
                _validate(request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status in abort_with_status()
                await abort_with_status(method, context, exc)

        return wrapped

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request, context):
            try:
                _validate(request)
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status in abort_with_status()
                await abort_with_status(method, context, exc)

        return wrapped


REQUESTS = Counter(
    "infermesh_grpc_requests_total", "gRPC calls handled, by method and status code.", ["method", "code"]
)
LATENCY = Histogram(
    "infermesh_grpc_request_duration_seconds",
    "Time from a call's start to its last message, by method.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def _code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code:
        return code_pb2.Code.Name(code)
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(WrappingInterceptor):
    """Counts calls by method and code and records their duration."""

    def _recorder(self, method: str) -> Callable[[grpc.aio.ServicerContext, float, bool], None]:
        latency = LATENCY.labels(method)

        def record(context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
            REQUESTS.labels(method, _code_name(context, failed)).inc()
            latency.observe(time.perf_counter() - started)

        return record

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        record = self._recorder(method)

        async def wrapped(request, context):
            started, failed = time.perf_counter(), True
            try:
                response = await behavior(request, context)
                failed = False
                return response
            finally:
                record(context, started, failed)

        return wrapped

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        record = self._recorder(method)

        async def wrapped(request, context):
            started, failed = time.perf_counter(), True
            try:
                async for item in behavior(request, context):
                    yield item
                failed = False
            finally:
                record(context, started, failed)

        return wrapped
