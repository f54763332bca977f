"""The official OpenAI Node SDK (tests/conformance/node, installed by `make node-deps`)
against the mesh: each case runs sdk_cases.mjs in node and asserts on what it printed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from openai_conformance import CITY_SCHEMA, WEATHER_PARAMETERS, cosine, validate

NODE_DIR = Path(__file__).resolve().parent / "node"


def run_case(base_url: str, case: str) -> dict:
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "the Node SDK is not installed: run `make node-deps`"
    done = subprocess.run(
        ["node", "sdk_cases.mjs", base_url, case], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"node case {case} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_chat(base_url):
    seen = run_case(base_url, "chat")
    assert seen["object"] == "chat.completion" and seen["model"] == "gemma-3-270m"
    assert seen["message"]["role"] == "assistant" and seen["message"]["content"].strip()
    assert seen["finish_reason"] in {"stop", "length"} and 0 < seen["usage"]["completion_tokens"] <= 16


def test_stream_joins_to_the_unary_answer(base_url):
    seen = run_case(base_url, "stream")
    assert seen["role"] == "assistant" and seen["pieces"] >= 2
    assert seen["streamed"] == seen["unary"]
    assert seen["finish_reasons"] == [seen["unary_finish_reason"]]


def test_embeddings_base64_default_and_float_agree(base_url):
    seen = run_case(base_url, "embeddings")
    assert seen["indexes"] == [0, 1] and seen["dimensions"] == [384, 384]
    assert cosine(seen["base64_decoded"], seen["float"]) > 0.9999


def test_forced_tool_call(base_url):
    choice = run_case(base_url, "tool_call")["choice"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"] and call["type"] == "function" and call["function"]["name"] == "get_weather"
    validate(json.loads(call["function"]["arguments"]), WEATHER_PARAMETERS)


def test_forced_tool_call_through_the_stream_helper(base_url):
    seen = run_case(base_url, "tool_call_stream")
    choice = seen["choice"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["id"] and call["function"]["name"] == "get_weather"
    assert "".join(seen["argument_deltas"]) == call["function"]["arguments"]
    validate(call["function"]["parsed_arguments"], WEATHER_PARAMETERS)


def test_structured_output_with_a_json_schema(base_url):
    seen = run_case(base_url, "structured")
    assert seen["schema"] == CITY_SCHEMA and seen["finish_reason"] == "stop"
    validate(json.loads(seen["content"]), CITY_SCHEMA)


def test_unknown_model_is_a_not_found_error_with_the_servers_message(base_url):
    seen = run_case(base_url, "not_found")
    assert seen["isNotFound"] and seen["status"] == 404
    assert "no-such-model" in seen["message"]


def test_unsupported_field_is_a_bad_request_naming_it(base_url):
    seen = run_case(base_url, "bad_request")
    assert seen["isBadRequest"] and seen["status"] == 400
    assert seen["param"] == "suffix" and seen["code"]
