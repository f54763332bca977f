"""REST through Envoy's transcoder to the router and the real models."""

from __future__ import annotations

import json

import httpx
import numpy as np

from support.metrics import metric
from support.polling import eventually
from support.sse import sse_events

PROMPT = {"model": "gemma-3-270m", "prompt": "The capital of France is", "config": {"max_tokens": 16}}


def test_generate_text_returns_real_text_and_token_usage(base_url):
    reply = httpx.post(f"{base_url}/v1/generate-text", json=PROMPT, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "gemma-3-270m"
    assert len(body["text"].split()) >= 3
    assert "paris" in body["text"].lower() or "capital" in body["text"].lower()
    assert body["usage"]["input_tokens"] >= 5
    assert body["usage"]["output_tokens"] == 16
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 16
    assert body["finish_reason"] == "FINISH_REASON_LENGTH"


def test_streamed_generation_arrives_as_server_sent_events_token_by_token(base_url):
    with httpx.stream("POST", f"{base_url}/v1/generate-text:stream", json=PROMPT, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    texts = [e["text"] for e in events if e["text"]]
    assert len(texts) >= 8, events  # many small events, not one blob
    final = events[-1]
    assert final["finish_reason"] == "FINISH_REASON_LENGTH"
    assert final["usage"]["output_tokens"] == 16
    # Greedy decoding: the stream says exactly what the unary call says.
    unary = httpx.post(f"{base_url}/v1/generate-text", json=PROMPT, timeout=120).json()
    assert "".join(texts) == unary["text"]


def test_embed_returns_unit_384_dim_vectors_that_capture_meaning(base_url):
    inputs = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by 4%."]
    reply = httpx.post(f"{base_url}/v1/embed", json={"model": "all-minilm-l6-v2", "inputs": inputs}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    vectors = np.array([e["values"] for e in body["embeddings"]])
    assert vectors.shape == (3, 384)
    assert [e["index"] for e in body["embeddings"]] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 > unrelated
    assert body["usage"]["input_tokens"] > 0


def test_chat_answers_as_the_assistant_and_stops_at_the_next_turn(base_url):
    request = {
        "model": "gemma-3-270m",
        "messages": [{"role": "ROLE_USER", "content": "What is the capital of France?"}],
        "config": {"max_tokens": 24},
    }
    reply = httpx.post(f"{base_url}/v1/chat", json=request, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["message"]["role"] == "ROLE_ASSISTANT"
    assert body["message"]["content"].strip()
    assert "User:" not in body["message"]["content"]
    assert not body["message"]["content"].startswith(" ")


def png(width: int = 4, height: int = 4) -> str:
    """A real PNG, base64-encoded as JSON carries bytes."""
    import base64
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_describe_image_on_a_text_model_says_it_cannot(base_url):
    request = {"model": "gemma-3-270m", "image": png(), "mime_type": "image/png"}
    reply = httpx.post(f"{base_url}/v1/describe-image", json=request, timeout=60)
    assert reply.status_code == 400
    assert "does not support image-description" in reply.json()["message"]


def test_a_client_that_disconnects_stops_its_generation(mesh, base_url):
    """Client → Envoy → router → Envoy → inference server: closing the HTTP connection
    cancels the whole chain, so the model stops generating for nobody."""
    metrics_url = f"http://127.0.0.1:{mesh.settings.inference_metrics_port}/metrics"

    def in_flight() -> float:
        for line in httpx.get(metrics_url, timeout=10).text.splitlines():
            if line.startswith('infermesh_inference_queue_depth{model="gemma-3-270m"}'):
                return float(line.split()[-1])
        return 0.0

    body = {"model": "gemma-3-270m", "prompt": "Tell me a very long story.", "config": {"max_tokens": 4000}}
    with httpx.stream("POST", f"{base_url}/v1/generate-text:stream", json=body, timeout=120) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert in_flight() == 1
    eventually(lambda: in_flight() == 0, what="the closed stream leaving the batch")
    assert in_flight() == 0


def test_images_are_checked_before_any_model_sees_them(base_url):
    truncated = {"model": "gemma-3-270m", "image": "iVBORw0KGgo=", "mime_type": "image/png"}
    reply = httpx.post(f"{base_url}/v1/describe-image", json=truncated, timeout=60)
    assert reply.status_code == 400 and reply.json()["details"][0]["reason"] == "IMAGE_NOT_DECODABLE"
    mislabelled = {"model": "gemma-3-270m", "image": png(), "mime_type": "image/jpeg"}
    reply = httpx.post(f"{base_url}/v1/describe-image", json=mislabelled, timeout=60)
    assert reply.status_code == 400 and reply.json()["details"][0]["reason"] == "IMAGE_TYPE_MISMATCH"
    assert "PNG, not the image/jpeg" in reply.json()["message"]


def test_a_body_over_the_limit_is_refused_before_any_service_reads_it(base_url, mesh):
    router = mesh.settings.router_metrics_port
    before = metric(router, "infermesh_grpc_requests_total", method="/infermesh.router.v1.RouterService/Embed")
    huge = {"model": "all-minilm-l6-v2", "inputs": ["x" * (33 * 1024 * 1024)]}
    reply = httpx.post(f"{base_url}/v1/embed", json=huge, timeout=60)
    assert reply.status_code == 413
    assert metric(router, "infermesh_grpc_requests_total", method="/infermesh.router.v1.RouterService/Embed") == before


def test_structured_outputs_and_tool_calls_on_the_native_rest_api(base_url):
    """The typed fields, as REST clients write them (enums by name, schemas as JSON)."""

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
    }
    chat = {
        "model": "gemma-3-270m",
        "messages": [{"role": "ROLE_USER", "content": "Where is the Eiffel Tower?"}],
        "config": {"max_tokens": 48},
    }
    shaped = httpx.post(
        f"{base_url}/v1/chat",
        json={
            **chat,
            "config": {
                **chat["config"],
                "response_format": {"type": "RESPONSE_FORMAT_TYPE_JSON_SCHEMA", "json_schema": schema},
            },
        },
        timeout=120,
    )
    assert shaped.status_code == 200, shaped.text
    assert set(json.loads(shaped.json()["message"]["content"])) == {"city", "country"}
    tool = {"name": "locate", "description": "Where a landmark is.", "parameters": schema}
    called = httpx.post(
        f"{base_url}/v1/chat",
        json={
            **chat,
            "tools": [tool],
            "tool_choice": {"mode": "TOOL_CHOICE_MODE_REQUIRED"},
            "parallel_tool_calls": False,
        },
        timeout=120,
    )
    assert called.status_code == 200, called.text
    answer = called.json()
    [call] = answer["message"]["tool_calls"]
    assert call["name"] == "locate" and set(json.loads(call["arguments"])) == {"city", "country"}
    assert answer["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
