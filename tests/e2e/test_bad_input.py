"""Bad input gets a clear error with the right status, and the mesh keeps serving."""

from __future__ import annotations

import httpx
import pytest

GOOD = {"model": "gemma-3-270m", "prompt": "Hello", "config": {"max_tokens": 2}}


def post(base_url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", timeout=120, **kwargs)


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v1/generate-text", b'{"model":"gemma-3-270m","prompt":', 400, "Unexpected end"),
        (
            "/v1/generate-text",
            b'{"model":"gemma-3-270m","prompt":"x","config":{"max_tokens":"many"}}',
            400,
            "max_tokens",
        ),
        ("/v1/generate-text", b'{"model":["gemma"],"prompt":"x"}', 400, "not repeating"),
        ("/v1/generate-text", b'{"model":"gemma-3-270m","prompt":""}', 400, "prompt"),
        ("/v1/generate-text", b'{"model":"gemma-3-270m","prompt":"x","config":{"max_tokens":0}}', 400, "max_tokens"),
        ("/v1/generate-text", b'{"model":"gemma-3-270m","prompt":"x","config":{"max_tokens":9000}}', 400, "8192"),
        ("/v1/generate-text", b'{"model":"gemma-3-270m","prompt":"x","config":{"temperature":5}}', 400, "temperature"),
        ("/v1/generate-text", b'{"model":"no-such-model","prompt":"x"}', 404, "no-such-model"),
        ("/v1/embed", b'{"model":"all-minilm-l6-v2","inputs":[]}', 400, "inputs"),
        ("/v1/embed", b'{"model":"all-minilm-l6-v2","inputs":[""]}', 400, "inputs"),
        ("/v1/embed", b'{"model":"gemma-3-270m","inputs":["x"]}', 400, "does not support embedding"),
        ("/v1/chat", b'{"model":"gemma-3-270m","messages":[]}', 400, "messages"),
        ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", b'{"model":"gemma-3-270m","messages":"hi"}', 400, "messages"),
        ("/v1/embeddings", b'{"model":"all-minilm-l6-v2","input":[]}', 400, "input"),
        # Token ids are cl100k_base's: one it does not have is named.
        ("/v1/embeddings", b'{"model":"all-minilm-l6-v2","input":[[15339,900000]]}', 400, "input[0]"),
        ("/v1/embeddings", b'{"model":"all-minilm-l6-v2","input":[[-1]]}', 400, "input"),
    ],
)
def test_bad_request_is_rejected_clearly(base_url, path, body, status, says):
    reply = post(base_url, path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert says in reply.text


def test_prompt_longer_than_the_context_names_the_limit(base_url):
    reply = post(base_url, "/v1/generate-text", json={**GOOD, "prompt": "hello " * 9000})
    assert reply.status_code == 400
    error = reply.json()
    assert "context length of 8192 tokens" in error["message"]
    info = error["details"][0]
    assert info["reason"] == "CONTEXT_LENGTH_EXCEEDED" and info["metadata"]["context_length"] == "8192"


def test_streaming_request_for_an_unknown_model_is_a_404_not_a_broken_stream(base_url):
    reply = post(base_url, "/v1/generate-text:stream", json={**GOOD, "model": "no-such-model"})
    assert reply.status_code == 404
    assert reply.json()["details"][0]["reason"] == "MODEL_NOT_FOUND"


def test_mesh_keeps_serving_after_bad_input(base_url):
    for _ in range(3):
        post(base_url, "/v1/generate-text", content=b"{broken", headers={"content-type": "application/json"})
        post(base_url, "/v1/generate-text", json={**GOOD, "model": "no-such-model"})
    reply = post(base_url, "/v1/generate-text", json=GOOD)
    assert reply.status_code == 200 and reply.json()["usage"]["output_tokens"] == 2
