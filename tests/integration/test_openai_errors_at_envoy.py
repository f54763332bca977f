"""The front door's part in OpenAI-shaped errors, with the real Envoy and the rendered
config in front of a stand-in router that answers as the router's OpenAI servicer does
(an OK call whose body is the OpenAI error, its status in x-infermesh-http-status): the
status reaches REST clients, streams are not buffered, gRPC clients and the native REST
API are answered as before, and Envoy's own replies on the OpenAI paths (no router, 413,
a verb the path does not serve) are in OpenAI's shape."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2

from gateway import envoy_config
from infermesh.openai.v1 import openai_service_pb2 as openai_pb
from infermesh.openai.v1 import openai_service_pb2_grpc as openai_grpc
from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from services.runtime.catalog import EmbeddedCatalog, ServiceInstance
from services.runtime.openai_errors import HTTP_STATUS_HEADER, openai_error_body
from support.paths import BIN, DESCRIPTOR_SET
from support.polling import eventually_async
from support.ports import free_port
from support.serving import serving

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOT_FOUND = openai_error_body(404, "model 'x' is not registered", "model_not_found", "model")
LIMITED = openai_error_body(429, "rate limit exceeded", "rate_limit_exceeded")


def body(payload: dict | bytes, content_type: str = "application/json") -> httpbody_pb2.HttpBody:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpbody_pb2.HttpBody(content_type=content_type, data=data)


def sse(payload: str) -> httpbody_pb2.HttpBody:
    return body(f"data: {payload}\n\n".encode(), "text/event-stream")


class StandIn(openai_grpc.OpenAIServiceServicer, router_grpc.RouterServiceServicer):
    """The router's answers, as its OpenAI servicer gives them (services/router/openai_servicer.py)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def CreateChatCompletion(self, request, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
        model = json.loads(request.body.data)["model"]
        if model == "x":
            await context.send_initial_metadata([(HTTP_STATUS_HEADER, "404")])
            yield body(NOT_FOUND)
        elif model == "limited":
            await context.send_initial_metadata([(HTTP_STATUS_HEADER, "429"), ("retry-after", "7")])
            yield body(LIMITED)
        else:  # a stream: the rest only once the client has the first event
            yield sse('{"n": 1}')
            await asyncio.wait_for(self.gate.wait(), 30)
            yield sse('{"n": 2}')
            yield sse("[DONE]")

    async def ListModels(self, request, context) -> httpbody_pb2.HttpBody:
        return body({"object": "list", "data": []})

    async def Embed(self, request, context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs: must not be empty")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def front_door(tmp_path_factory):
    """The front door's address, the stand-in, and its server (to stop it)."""
    stand_in = StandIn()
    answers = [(openai_grpc.add_OpenAIServiceServicer_to_server, stand_in)]
    answers.append((router_grpc.add_RouterServiceServicer_to_server, stand_in))
    router_serving = {"infermesh.router.v1.RouterService": health_pb2.HealthCheckResponse.SERVING}
    async with serving(answers, health=router_serving) as router:
        ports = envoy_config.EnvoyPorts(free_port(), free_port(), free_port())
        catalog = EmbeddedCatalog.of([ServiceInstance("router", "router", "127.0.0.1", router.port)])
        directory = tmp_path_factory.mktemp("front-door")
        config = directory / "envoy.yaml"
        envoy_config.write(envoy_config.render(catalog, DESCRIPTOR_SET, ports), config)
        log = (directory / "envoy.log").open("w")
        command = [str(BIN / "envoy"), "-c", str(config), "--disable-hot-restart", "--log-level", "error"]
        envoy = subprocess.Popen([*command, "--base-id", str(ports.admin)], stdout=subprocess.DEVNULL, stderr=log)
        front = f"127.0.0.1:{ports.front_door}"
        try:
            async with httpx.AsyncClient(base_url=f"http://{front}", timeout=30) as client:

                async def reaches_the_stand_in() -> bool:  # once the router cluster's health check has passed
                    assert envoy.poll() is None, (directory / "envoy.log").read_text()
                    return (await client.get("/v1/models")).status_code == 200

                await eventually_async(
                    reaches_the_stand_in,
                    timeout=60,
                    interval=0.2,
                    what="the front door reaching the stand-in",
                    ignoring=httpx.TransportError,
                )
            yield front, stand_in, router.server
        finally:
            envoy.terminate()
            envoy.wait(timeout=30)
            log.close()


async def test_the_servicers_status_header_becomes_the_http_status(front_door):
    front, _, _ = front_door
    async with httpx.AsyncClient(base_url=f"http://{front}", timeout=30) as client:
        missing = await client.post("/v1/chat/completions", json={"model": "x"})
        assert missing.status_code == 404 and missing.json() == NOT_FOUND
        assert HTTP_STATUS_HEADER not in missing.headers
        limited = await client.post("/v1/chat/completions", json={"model": "limited"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
        assert limited.json() == LIMITED


async def test_a_stream_is_not_buffered_on_the_openai_routes(front_door):
    front, stand_in, _ = front_door
    async with httpx.AsyncClient(base_url=f"http://{front}", timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True}) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"] == "text/event-stream"
            lines = reply.aiter_lines()
            assert await anext(lines) == 'data: {"n": 1}'  # before the server sends the rest
            stand_in.gate.set()
            rest = [line async for line in lines if line]
    assert rest == ['data: {"n": 2}', "data: [DONE]"]


async def test_grpc_callers_and_the_native_rest_api_are_answered_as_before(front_door):
    front, _, _ = front_door
    async with grpc.aio.insecure_channel(front) as channel:
        request = openai_pb.CreateChatCompletionRequest(body=body({"model": "x"}))
        call = openai_grpc.OpenAIServiceStub(channel).CreateChatCompletion(request)
        assert [json.loads(b.data) async for b in call] == [NOT_FOUND]
        assert await call.code() == grpc.StatusCode.OK
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await router_grpc.RouterServiceStub(channel).Embed(router_messages.EmbedRequest(model="m"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with httpx.AsyncClient(base_url=f"http://{front}", timeout=30) as client:
        native = await client.post("/v1/embed", json={"model": "m"})
        assert native.status_code == 400
        assert native.json() == {"code": 3, "message": "inputs: must not be empty", "details": []}
        unknown = await client.get("/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.headers["content-type"] == "text/plain"


async def test_envoys_own_replies_on_the_openai_paths_are_openai_shaped(front_door):
    front, _, server = front_door
    async with httpx.AsyncClient(base_url=f"http://{front}", timeout=60) as client:
        wrong_verb = await client.delete("/v1/models?limit=2")
        assert wrong_verb.status_code == 404
        assert wrong_verb.json()["error"] == {
            "message": "Invalid URL (DELETE /v1/models?limit=2)",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
        too_big = b"{" + b" " * (33 * 1024 * 1024) + b"}"
        refused = await client.post("/v1/embeddings", content=too_big)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
        assert (await client.post("/v1/embed", content=too_big)).text == "Payload Too Large"
        # The router gone: Envoy answers 503 itself (a refused connection, then, once its
        # health check has noticed, no healthy upstream).
        await server.stop(0)

        async def no_healthy_upstream() -> httpx.Response | None:
            down = await client.get("/v1/models")
            assert down.status_code in (200, 503), down.text
            if down.status_code == 503:
                assert down.json()["error"]["code"] == "service_unavailable"
            return down if "no_healthy_upstream" in down.text else None

        down = await eventually_async(no_healthy_upstream, timeout=30, interval=0.2, what="Envoy's no_healthy_upstream")
        assert down.status_code == 503 and down.headers["content-type"] == "application/json"
        assert down.json()["error"] == {
            "message": "the mesh could not serve this request: no_healthy_upstream",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
        native = await client.post("/v1/embed", json={"model": "m"})
        assert native.status_code == 503 and native.text == "no healthy upstream"
