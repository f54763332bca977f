"""Fuzzing the front door: every REST route and every gRPC method it serves answers any
request with a success or a clear client error, never a server error, and nothing crashes.

The routes and methods are enumerated from the protobuf descriptors Envoy transcodes with
(tests/support/fuzzing.py), so a new RPC is fuzzed as soon as it is declared. Hypothesis builds:

- REST: bodies shaped like the request message (right field names; values of the right
  type and of wrong ones, huge and negative numbers, unicode, empty strings, nested
  garbage, unknown fields), junk bodies (not JSON, truncated, not UTF-8, the wrong
  content type), the wrong verb, and random path segments (`%2F`, unicode, 62 KB);
- gRPC: messages of the request type with any value the wire format allows, and bytes
  that do not decode as one.

Why: a 5xx tells a client that the mesh failed and that retrying may help; for bad input
neither is true, and the client never learns which field was wrong. A gRPC INTERNAL or
UNKNOWN is an exception nobody handled (and may carry its text), UNIMPLEMENTED for a
declared method is a broken route, and 503/UNAVAILABLE would have clients and Envoy retry
a request that can never succeed. So REST must answer < 500 (a 4xx with a body saying
why), gRPC never INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED or UNAVAILABLE, not even
inside a 200 (a part of a batch or parallel call, an event of a stream); unary calls
never hang; every mesh process is still running afterwards.

The mesh is the session's shared one: requests never name a real resource where they
could change it and every generation is capped at two tokens (see tests/support/fuzzing.py);
what the fuzzer creates has a `fuzz-` id and is deleted at the end. Runs are reproducible
(derandomized); failures are reported unshrunk, with the exact request, to stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, Phase, given, settings

from support import fuzzing
from support.fuzzing import GrpcRequest, HttpRequest, Known, Route, Rpc

# Codes that mean the server failed, not the request; UNAVAILABLE is REST's 503.
SERVER_FAILURES = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
}
SERVER_FAILURE_NUMBERS = {code.value[0] for code in SERVER_FAILURES}
REST_EXAMPLES = 25  # per route
GRPC_EXAMPLES = 50  # per method: most are refused at once, without a trip through Envoy's transcoder
STREAM_EXAMPLES = 5  # per streaming method: a watch stays open, each such example waits STREAM_IDLE_SECONDS
STREAM_IDLE_SECONDS = 1.0  # a stream silent this long is left as it is (a watch never ends)
TIMEOUT_SECONDS = 60  # a unary call that takes longer hangs


def fuzz_settings(rpc: Rpc, examples: int) -> settings:
    return settings(
        max_examples=STREAM_EXAMPLES if rpc.server_streaming else examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking against a live mesh
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_SECONDS) as client:
        keys_before = {key["name"] for key in _pages(client, "/v1/registry/apiKeys", "api_keys")}
        yield client
        _undo_what_the_fuzzer_created(client, keys_before)


@pytest.fixture(scope="module")
def channel(front_door: str) -> Iterator[grpc.Channel]:
    limit = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(front_door, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def known(client: httpx.Client) -> Known:
    models = [
        m
        for m in _pages(client, "/v1/registry/models", "models")
        if not m["name"].startswith(f"models/{fuzzing.FUZZ_PREFIX}")  # left by an interrupted run
    ]
    # Text generators first: Hypothesis draws the first of a list most, and most
    # inference calls need one to get past "does not support".
    models.sort(key=lambda m: "text-generation" not in m.get("capabilities", []))
    registry = tuple(m["name"].removeprefix("models/") for m in models)
    backend = tuple(m["model_id"] for m in _pages(client, "/v1/backend/models", "models"))
    assert "gemma-3-270m" in registry, "the mesh's registry lists no models: nothing real to fuzz with"
    return Known(models=registry, protected=frozenset(registry + backend))


@pytest.fixture(scope="module")
def exited_before(mesh) -> set[int]:
    """The mesh's processes that had exited before the fuzzing began (other tests' doing)."""
    return {child.process.pid for child in mesh.exited()}


@pytest.mark.parametrize("route", fuzzing.routes(), ids=lambda route: route.id)
def test_rest_route_answers_fuzzed_requests_with_a_success_or_a_clear_4xx(
    route: Route, client: httpx.Client, known: Known, exited_before
):
    reports_operations = _holds_operations(route.rpc.output)

    @fuzz_settings(route.rpc, REST_EXAMPLES)
    @given(request=fuzzing.rest_requests(route, known))
    def answers_clearly(request: HttpRequest) -> None:
        reply = _send_rest(client, request, stream=route.rpc.server_streaming)
        if reply is None:
            return  # a stream still open and silent: nothing wrong so far
        status, body = reply
        assert status < 500, f"{status} for {request}\n{body[:1000]}"
        if status >= 400:
            assert body.strip(), f"{status} without a word of why for {request}"
        if not reports_operations:  # an operation's error is the outcome of earlier work
            failures = [s for s in _statuses_in_json(body) if s.get("code") in SERVER_FAILURE_NUMBERS]
            assert not failures, f"{status} carrying server failures {failures} for {request}"

    answers_clearly()


@pytest.mark.parametrize("rpc", fuzzing.rpcs(), ids=lambda rpc: rpc.path)
def test_grpc_method_answers_fuzzed_messages_and_bytes_without_a_server_failure(
    rpc: Rpc, channel: grpc.Channel, known: Known, exited_before
):
    @fuzz_settings(rpc, GRPC_EXAMPLES)
    @given(request=fuzzing.grpc_requests(rpc, known))
    def answers_clearly(request: GrpcRequest) -> None:
        code, details, replies = _send_grpc(channel, request)
        if code is None:
            return  # a stream still open when we left it
        assert code not in SERVER_FAILURES, f"{code.name} ({details!r}) for {request}"
        if code is not grpc.StatusCode.OK:
            assert details.strip(), f"{code.name} without a word of why for {request}"
        for reply in replies:
            failures = [s for s in _statuses_in(rpc.output, reply) if s.code in SERVER_FAILURE_NUMBERS]
            assert not failures, f"OK carrying server failures {failures} for {request}"

    answers_clearly()


def test_every_mesh_process_still_runs_and_answers_after_fuzzing(mesh, client: httpx.Client, exited_before):
    died = [f"{c.name} (exit {c.process.returncode})" for c in mesh.exited() if c.process.pid not in exited_before]
    assert not died, f"mesh processes exited while fuzzed: {died}; their logs are in {mesh.log_dir}"
    reply = client.post(
        "/v1/generate-text", json={"model": "gemma-3-270m", "prompt": "Hello", "config": {"max_tokens": 2}}
    )
    assert reply.status_code == 200 and reply.json()["usage"]["output_tokens"] == 2, reply.text


# Sending


def _send_rest(client: httpx.Client, request: HttpRequest, stream: bool) -> tuple[int, str] | None:
    """Status and body; for a stream, what arrived until it ended or fell silent (None:
    silent before its status)."""
    timeout = httpx.Timeout(TIMEOUT_SECONDS, read=STREAM_IDLE_SECONDS) if stream else TIMEOUT_SECONDS
    chunks: list[bytes] = []
    try:
        with client.stream(
            request.method, request.path, headers=request.headers, content=request.content, timeout=timeout
        ) as reply:
            try:
                for chunk in reply.iter_bytes():
                    chunks.append(chunk)
            except httpx.ReadTimeout:
                if not stream:
                    raise
            return reply.status_code, b"".join(chunks).decode(errors="replace")
    except httpx.ReadTimeout:
        if stream:
            return None
        raise AssertionError(f"no answer within {TIMEOUT_SECONDS} s for {request}") from None


def _send_grpc(channel: grpc.Channel, request: GrpcRequest) -> tuple[grpc.StatusCode | None, str, list[bytes]]:
    """The call's status, details and replies (raw bytes; no per-method code). A stream
    gets STREAM_IDLE_SECONDS: past that its status is None (left open, not failed)."""
    rpc = request.rpc
    if not rpc.server_streaming:
        try:
            reply = channel.unary_unary(rpc.path)(request.payload, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            assert error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer in time for {request}"
            return error.code(), error.details() or "", []
        return grpc.StatusCode.OK, "", [reply]
    replies: list[bytes] = []
    call = channel.unary_stream(rpc.path)(request.payload, timeout=STREAM_IDLE_SECONDS)
    try:
        for reply in call:
            replies.append(reply)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return None, "", replies
        return error.code(), error.details() or "", replies
    return grpc.StatusCode.OK, "", replies


# Errors inside successful answers: google.rpc.Status values in JSON bodies (REST,
# server-sent events) and in replies (gRPC)


def _statuses_in_json(body: str) -> list[dict[str, Any]]:
    documents = []
    for text in [body, *(line.removeprefix("data:") for line in body.splitlines() if line.startswith("data:"))]:
        try:
            documents.append(json.loads(text))
        except ValueError:
            continue
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("code"), int) and "message" in value:
                found.append(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for document in documents:
        walk(document)
    return found


OPERATION = "google.longrunning.Operation"


def _holds_operations(descriptor: Descriptor) -> bool:
    return descriptor.full_name == OPERATION or any(
        f.message_type is not None and f.message_type.full_name == OPERATION for f in descriptor.fields
    )


def _statuses_in(descriptor: Descriptor, payload: bytes) -> list[Message]:
    """The google.rpc.Status values in a reply, but for operations' (their outcome is that
    of earlier work, not of this request)."""
    try:
        message = fuzzing.message_class(descriptor).FromString(payload)
    except DecodeError:
        return []
    found: list[Message] = []

    def walk(message: Message) -> None:
        if message.DESCRIPTOR.full_name == "google.rpc.Status":
            found.append(message)
        if message.DESCRIPTOR.full_name == OPERATION:
            return
        for field, value in message.ListFields():
            if field.message_type is None or field.message_type.GetOptions().map_entry:
                continue
            for item in value if field.is_repeated else [value]:
                walk(item)

    walk(message)
    return found


# Cleaning up


def _pages(client: httpx.Client, path: str, key: str) -> Iterator[dict[str, Any]]:
    token = ""
    while True:
        reply = client.get(path, params={"page_size": 100, **({"page_token": token} if token else {})})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        yield from page.get(key, [])
        token = page.get("next_page_token", "")
        if not token:
            return


def _undo_what_the_fuzzer_created(client: httpx.Client, keys_before: set[str]) -> None:
    """Deletes the `fuzz-` models (with their versions and deployments) and revokes the
    API keys issued while fuzzing (keys cannot be deleted; one asked for with no id got
    one from the registry, so they are told apart by when they appeared)."""
    for model in list(_pages(client, "/v1/registry/models", "models")):
        if model["name"].startswith(f"models/{fuzzing.FUZZ_PREFIX}"):
            client.delete(f"/v1/registry/{model['name']}", params={"force": True})
    for key in list(_pages(client, "/v1/registry/apiKeys", "api_keys")):
        if key["name"] not in keys_before and not key.get("revoke_time"):
            client.post(f"/v1/registry/{key['name']}:revoke", json={})
