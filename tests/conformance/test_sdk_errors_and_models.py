"""Errors in OpenAI's shape and the model list, as the official Python SDK sees them."""

from __future__ import annotations

import httpx
import openai
import pytest

from openai_conformance import BASE_MODEL, VERSIONED_MODEL, sdk_client

MESSAGES = [{"role": "user", "content": "Name a French city."}]


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


@pytest.mark.parametrize("stream", [False, True])
def test_a_field_the_model_cannot_honour_is_a_bad_request_naming_it(client, stream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model=BASE_MODEL, prompt="Paris is", suffix=" in France.", max_tokens=4, stream=stream
        )
    assert caught.value.param == "suffix" and caught.value.code


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_is_not_found_with_the_servers_message(client, stream):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4, stream=stream)
    assert "no-such-model" in caught.value.body["message"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/completions", {"model": BASE_MODEL, "prompt": "Paris is", "suffix": "!", "max_tokens": 4}, 400),
        ("/v1/chat/completions", {"model": "no-such-model", "messages": MESSAGES}, 404),
        ("/v1/embeddings", {"model": "no-such-model", "input": "hello"}, 404),
    ],
)
def test_error_bodies_have_openai_shape(base_url, path, body, status):
    reply = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    assert reply.status_code == status and reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(reply.json()) == {"error"} and {"message", "type", "param", "code"} <= set(error)
    assert error["message"] and error["type"] and error["code"]


def test_model_list_includes_versions_one_may_request(client):
    assert {BASE_MODEL, VERSIONED_MODEL} <= {m.id for m in client.models.list()}


def test_a_version_can_be_retrieved(client):
    assert client.models.retrieve(VERSIONED_MODEL).id == VERSIONED_MODEL
