"""Structured outputs through the official Python SDK: the reply is JSON that validates."""

from __future__ import annotations

import json

import pytest

from openai_conformance import CITY_QUESTION, CITY_SCHEMA, INSTRUCT_MODEL, TEXT_MODELS, City, sdk_client, validate


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_json_schema_response_format_gives_content_that_validates(client, model):
    reply = client.chat.completions.create(
        model=model,
        messages=CITY_QUESTION,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA}},
        temperature=0,
        max_tokens=64,
    )
    assert reply.choices[0].finish_reason == "stop"
    validate(json.loads(reply.choices[0].message.content), CITY_SCHEMA)


def test_parse_helper_returns_the_pydantic_model(client):
    reply = client.chat.completions.parse(
        model=INSTRUCT_MODEL, messages=CITY_QUESTION, response_format=City, temperature=0, max_tokens=64
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.city


def test_json_object_response_format_gives_a_json_object(client):
    reply = client.chat.completions.create(
        model=INSTRUCT_MODEL,
        messages=[{"role": "system", "content": "Answer in JSON."}, *CITY_QUESTION],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
