"""Tool calls through the official Python SDK, in OpenAI's exact shapes, unary and streamed."""

from __future__ import annotations

import json

import pytest

from openai_conformance import (
    FORCE_GET_WEATHER,
    GET_TIME,
    GET_WEATHER,
    INSTRUCT_MODEL,
    TEXT_MODELS,
    TIME_PARAMETERS,
    WEATHER_PARAMETERS,
    WEATHER_QUESTION,
    sdk_client,
    validate,
)

MAX_TOKENS = 64


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


def weather_call(client, model=INSTRUCT_MODEL, **extra):
    return client.chat.completions.create(
        model=model,
        messages=WEATHER_QUESTION,
        tools=[GET_WEATHER],
        tool_choice=FORCE_GET_WEATHER,
        temperature=0,
        max_tokens=MAX_TOKENS,
        **extra,
    )


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_forced_tool_call_has_openai_shape_and_valid_arguments(client, model):
    choice = weather_call(client, model).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)


def test_required_tool_choice_calls_one_of_the_tools(client):
    choice = client.chat.completions.create(
        model=INSTRUCT_MODEL,
        messages=WEATHER_QUESTION,
        tools=[GET_WEATHER, GET_TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=MAX_TOKENS,
    ).choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    schemas = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
    assert call.function.name in schemas
    validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_tool_choice_none_answers_in_text(client):
    choice = client.chat.completions.create(
        model=INSTRUCT_MODEL,
        messages=WEATHER_QUESTION,
        tools=[GET_WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=16,
    ).choices[0]
    assert not choice.message.tool_calls
    assert choice.finish_reason in {"stop", "length"} and choice.message.content


def test_streamed_tool_call_arrives_in_openai_chunk_shape(client):
    chunks = [c for c in weather_call(client, stream=True) if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    first, later = deltas[0], deltas[1:]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function.name == "get_weather" and isinstance(first.function.arguments, str)
    for delta in later:  # OpenAI repeats only the index: the id, type and name come once
        assert delta.index == 0 and delta.id is None and delta.type is None
        assert delta.function.name is None and isinstance(delta.function.arguments, str)
    assert not any(c.choices[0].delta.content for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"
    assert not any(c.choices[0].finish_reason for c in chunks[:-1])
    validate(json.loads("".join(d.function.arguments for d in deltas)), WEATHER_PARAMETERS)


def test_stream_helper_final_completion_agrees_with_the_unary_call(client):
    unary = weather_call(client).choices[0]
    with client.chat.completions.stream(
        model=INSTRUCT_MODEL,
        messages=WEATHER_QUESTION,
        tools=[GET_WEATHER],
        tool_choice=FORCE_GET_WEATHER,
        temperature=0,
        max_tokens=MAX_TOKENS,
    ) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == unary.finish_reason == "tool_calls"
    streamed, expected = final.message.tool_calls[0], unary.message.tool_calls[0]
    assert (streamed.function.name, streamed.function.arguments) == (
        expected.function.name,
        expected.function.arguments,
    )
    assert streamed.function.parsed_arguments == json.loads(expected.function.arguments)


def test_tool_result_in_history_is_accepted_and_answered(client):
    call = {
        "id": "call_weather_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})},
    }
    messages = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_weather_1", "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    # Left to choose, Qwen2.5-Coder-0.5B repeats its call after the result (it does so
    # without any grammar too); tool_choice "none" asks it for the answer, as agents do.
    choice = client.chat.completions.create(
        model=INSTRUCT_MODEL, messages=messages, tools=[GET_WEATHER], tool_choice="none", temperature=0, max_tokens=32
    ).choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert choice.message.content and not choice.message.tool_calls
    # With the choice left to it, the model may call again: a call that validates, or text.
    again = client.chat.completions.create(
        model=INSTRUCT_MODEL, messages=messages, tools=[GET_WEATHER], temperature=0, max_tokens=48
    ).choices[0]
    for call in again.message.tool_calls or []:
        validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
