"""Sends a batch's requests to the router over gRPC, on the owner's behalf (the identity
headers, which the router trusts on calls from inside the mesh), and gives back what an
HTTP client of the front door would have seen: the status and the JSON body.

Endpoints: OpenAI's chat, completions and embeddings (the router's OpenAI servicer, the
body passed through as it is), and every unary method of the native API that takes its
whole request as a JSON body (`/v1/generate-text`, `/v1/chat`, `/v1/embed`, the image and
audio methods...), found in the router's HTTP annotations and translated as Envoy's
transcoder would (proto field names; an unknown field is a 400, as it must be)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2, httpbody_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2

from infermesh.openai.v1 import openai_service_pb2 as openai_pb
from infermesh.router.v1 import router_service_pb2
from services.jobs.batches import invalid
from services.jobs.runner import Answer, Unreachable
from services.runtime.errors import InvalidArgument
from services.runtime.identity import Caller
from services.runtime.openai_errors import HTTP_STATUS, openai_error

STATUS_DETAILS = "grpc-status-details-bin"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class Endpoint:
    method: str  # the gRPC path
    request: type[Message]
    response: type[Message]
    openai: bool  # OpenAI's JSON in and out (google.api.HttpBody), OpenAI's errors
    streams: bool  # the method answers with a stream (OpenAI's chat and completions: one message unless streaming)


def _openai_endpoints() -> dict[str, Endpoint]:
    service = openai_pb.DESCRIPTOR.services_by_name["OpenAIService"]
    found = {}
    for name, path in (
        ("CreateChatCompletion", "/v1/chat/completions"),
        ("CreateCompletion", "/v1/completions"),
        ("CreateEmbedding", "/v1/embeddings"),
    ):
        method = service.methods_by_name[name]
        request = getattr(openai_pb, method.input_type.name)
        found[path] = Endpoint(
            f"/{service.full_name}/{name}", request, httpbody_pb2.HttpBody, True, method.server_streaming
        )
    return found


def _native_endpoints() -> dict[str, Endpoint]:
    """The router's unary methods bound to `POST <path>` with the whole request as body."""
    service = router_service_pb2.DESCRIPTOR.services_by_name["RouterService"]
    found = {}
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        if rule.post and rule.body == "*" and not method.server_streaming and not method.client_streaming:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            found[rule.post] = Endpoint(f"/{service.full_name}/{method.name}", request, response, False, False)
    return found


ENDPOINTS: dict[str, Endpoint] = {**_openai_endpoints(), **_native_endpoints()}


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The call's google.rpc.Status (with its details); None when the call got no answer
    from a service at all (refused or reset: there is no status a service wrote)."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS:
            return status_pb2.Status.FromString(value)
    code = error.code()
    if (
        code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        and not (error.details() or "").strip()
    ):
        return None
    return status_pb2.Status(code=code.value[0], message=error.details() or "")


def _native_request(endpoint: Endpoint, body: dict[str, Any]) -> Message:
    try:
        return json_format.ParseDict(body, endpoint.request())
    except json_format.ParseError as exc:
        raise invalid(f"the request body does not fit {endpoint.request.DESCRIPTOR.name}: {exc}", "body") from None


class RouterSender:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], timeout_seconds: float) -> None:
        self._channel = channel
        self.timeout = timeout_seconds

    async def __call__(self, caller: Caller, url: str, body: dict[str, Any]) -> Answer:
        endpoint = ENDPOINTS[url]
        request_id = uuid.uuid4().hex
        # An anonymous owner (authorization off) sends no identity: the router sees none.
        identity = list(caller.headers().items()) if not caller.anonymous else []
        metadata = [*identity, (REQUEST_ID_HEADER, request_id)]
        try:
            if endpoint.openai:
                message = endpoint.request(
                    body=httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(body).encode())
                )
            else:
                message = _native_request(endpoint, body)
        except InvalidArgument as exc:  # answered as the front door's transcoder would
            return _error_answer(endpoint, exc.to_status(), request_id)
        try:
            reply = await self._call(endpoint, message, metadata)
        except grpc.aio.AioRpcError as error:
            status = _status(error)
            if status is None:
                raise Unreachable(f"{error.code().name}: {error.details()}") from None
            return _error_answer(endpoint, status, request_id)
        if endpoint.openai:
            return Answer(200, json.loads(reply.data), request_id)
        return Answer(200, _as_json(reply), request_id)

    async def _call(self, endpoint: Endpoint, message: Message, metadata: list[tuple[str, str]]) -> Message:
        channel = self._channel()
        serialize, deserialize = type(message).SerializeToString, endpoint.response.FromString
        if endpoint.streams:
            call = channel.unary_stream(
                endpoint.method, request_serializer=serialize, response_deserializer=deserialize
            )
            parts = [part async for part in call(message, metadata=metadata, timeout=self.timeout)]
            return httpbody_pb2.HttpBody(
                content_type=parts[0].content_type if parts else "application/json",
                data=b"".join(p.data for p in parts),
            )
        call = channel.unary_unary(endpoint.method, request_serializer=serialize, response_deserializer=deserialize)
        return await call(message, metadata=metadata, timeout=self.timeout)


def _error_answer(endpoint: Endpoint, status: status_pb2.Status, request_id: str) -> Answer:
    """A failed call as the front door would answer it: OpenAI's status and error body on
    its paths, else the transcoder's status and google.rpc.Status JSON."""
    if endpoint.openai:
        return Answer(*openai_error(status), request_id)
    body = json_format.MessageToDict(status, preserving_proto_field_name=True)
    return Answer(HTTP_STATUS.get(status.code, 500), body, request_id)


def _as_json(message: Message) -> dict[str, Any]:
    """A reply as the transcoder prints it (envoy/front_door.yaml's print_options)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
