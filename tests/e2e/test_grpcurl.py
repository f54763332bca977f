"""gRPC through Envoy with the real grpcurl: reflection, describe, unary and streaming."""

from __future__ import annotations

import json
import subprocess

from support.paths import BIN

REQUEST = json.dumps({"model": "gemma-3-270m", "prompt": "The capital of France is", "config": {"max_tokens": 8}})


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_list_shows_the_public_services_and_health(front_door):
    result = grpcurl(front_door, "list")
    services = set(result.stdout.split())
    assert {
        "infermesh.router.v1.RouterService",
        "infermesh.openai.v1.OpenAIService",
        # Served by other processes behind the same front door; the router describes them.
        "infermesh.registry.v1.RegistryService",
        "infermesh.vector.v1.VectorService",
        "infermesh.jobs.v1.BatchService",
        "grpc.health.v1.Health",
    } <= services


def test_describe_shows_the_rpcs_with_their_http_rules(front_door):
    result = grpcurl(front_door, "describe", "infermesh.router.v1.RouterService")
    assert (
        "rpc StreamGenerateText" in result.stdout
        and "returns ( stream .infermesh.router.v1.GenerateTextResponse )" in result.stdout
    )
    assert "/v1/generate-text" in result.stdout


def test_unary_call(front_door):
    result = grpcurl("-d", REQUEST, front_door, "infermesh.router.v1.RouterService/GenerateText")
    reply = json.loads(result.stdout)
    assert reply["text"].strip() and reply["usage"]["output_tokens"] == 8


def test_streaming_call_sends_many_messages(front_door):
    result = grpcurl("-d", REQUEST, front_door, "infermesh.router.v1.RouterService/StreamGenerateText")
    messages = [json.loads(m) for m in result.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert len(messages) >= 5
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH"


def test_health_check_through_envoy(front_door):
    result = grpcurl("-d", '{"service":"infermesh.router.v1.RouterService"}', front_door, "grpc.health.v1.Health/Check")
    assert json.loads(result.stdout)["status"] == "SERVING"
