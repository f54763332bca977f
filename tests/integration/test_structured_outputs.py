"""Structured outputs, tool calls, log probabilities and penalties from the local runtimes,
through the inference contract (an in-process inference server with real models): the
answer follows the JSON Schema or the tool's parameters because decoding cannot leave
them, on transformers (Gemma 3 270M base) and llama.cpp (the same model's GGUF)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import jsonschema
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.runtime.errors import error_info
from support.paths import ROOT
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
TRANSFORMERS, LLAMA = "gemma-3-270m", "gemma-3-270m-llamacpp"
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
RUNTIMES = [TRANSFORMERS, LLAMA]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def schema_format(schema: dict) -> options.ResponseFormat:
    return options.ResponseFormat(type=options.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=struct(schema))


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=types.ROLE_USER, content=text)


TOOLS = [
    options.Tool(name="get_weather", description="The weather in a city.", parameters=struct(WEATHER)),
    options.Tool(name="get_time", description="The time now."),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stub():
    async with inference_server(models=RUNTIMES, available_models=[]) as server:
        yield server.inference


@pytest.mark.parametrize("model", RUNTIMES)
async def test_a_json_schema_answer_parses_and_validates(stub, model):
    reply = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=model,
            prompt="A person, as JSON:",
            config=options.GenerationConfig(max_tokens=80, response_format=schema_format(PERSON)),
        )
    )
    jsonschema.validate(json.loads(reply.text), PERSON)
    assert reply.finish_reason == types.FINISH_REASON_STOP


@pytest.mark.parametrize("model", RUNTIMES)
async def test_a_chat_in_json_object_mode_answers_an_object(stub, model):
    request = pb.ChatRequest(
        model=model,
        messages=[user("Give me a JSON object with a field `color`.")],
        config=options.GenerationConfig(
            max_tokens=60,
            temperature=0.8,
            seed=7,
            response_format=options.ResponseFormat(type=options.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
        ),
    )
    reply = await stub.Chat(request)
    assert isinstance(json.loads(reply.message.content), dict)


@pytest.mark.parametrize("model", RUNTIMES)
async def test_a_forced_tool_call_has_arguments_that_validate(stub, model):
    reply = await stub.Chat(
        pb.ChatRequest(
            model=model,
            messages=[user("What is the weather in Paris?")],
            tools=TOOLS,
            tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_FUNCTION, function_name="get_weather"),
            config=options.GenerationConfig(max_tokens=60),
        )
    )
    assert reply.finish_reason == types.FINISH_REASON_TOOL_CALLS
    assert reply.message.content == ""
    [call] = reply.message.tool_calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)


async def test_a_required_call_picks_one_of_the_tools_and_streams_in_pieces(stub):
    request = pb.ChatRequest(
        model=LLAMA,
        messages=[user("What time is it, and the weather in Rome?")],
        tools=TOOLS,
        tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_REQUIRED),
        parallel_tool_calls=False,
        # Greedy: the stream must make the same choice as the unary call to be compared.
        config=options.GenerationConfig(max_tokens=80, temperature=0),
    )
    unary = await stub.Chat(request)
    assert len(unary.message.tool_calls) == 1 and unary.message.tool_calls[0].name in {"get_weather", "get_time"}
    chunks = [c async for c in stub.StreamChat(request)]
    pieces = [p for c in chunks for p in c.message.tool_calls]
    assert len(pieces) > len(unary.message.tool_calls)  # names first, then argument fragments
    for call in unary.message.tool_calls:
        streamed = [p for p in pieces if p.index == call.index]
        assert streamed[0].name == call.name and streamed[0].id
        assert all(not p.id and not p.name for p in streamed[1:])
        assert json.loads("".join(p.arguments for p in streamed)) == json.loads(call.arguments)
    assert chunks[-1].finish_reason == types.FINISH_REASON_TOOL_CALLS


async def test_tool_choice_none_answers_in_text_and_a_tool_result_is_read(stub):
    history = [
        user("What is the weather in Paris?"),
        pb.ChatMessage(
            role=types.ROLE_ASSISTANT,
            tool_calls=[options.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris", "unit": "C"}')],
        ),
        pb.ChatMessage(role=types.ROLE_TOOL, tool_call_id="call_1", content="21 degrees and sunny"),
    ]
    reply = await stub.Chat(
        pb.ChatRequest(
            model=TRANSFORMERS,
            messages=history,
            tools=TOOLS,
            tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_NONE),
            config=options.GenerationConfig(max_tokens=24),
        )
    )
    assert reply.message.content and not reply.message.tool_calls
    assert reply.finish_reason != types.FINISH_REASON_TOOL_CALLS


@pytest.mark.parametrize("model", RUNTIMES)
async def test_logprobs_line_up_with_the_text_and_greedy_picks_the_top_token(stub, model):
    reply = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=model,
            prompt="The capital of France is",
            config=options.GenerationConfig(max_tokens=8, logprobs=True, top_logprobs=3),
        )
    )
    assert len(reply.logprobs) == 8
    assert "".join(e.token for e in reply.logprobs) == reply.text
    for entry in reply.logprobs:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)


@pytest.mark.parametrize("model", RUNTIMES)
async def test_logit_bias_bans_the_token_greedy_decoding_would_pick(stub, model):
    request = pb.GenerateTextRequest(
        model=model, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=1)
    )
    first = await stub.GenerateText(request)
    request.config.logit_bias[gemma_token_id(first.text)] = -100
    second = await stub.GenerateText(request)
    assert second.text and second.text != first.text


def gemma_token_id(text: str) -> int:
    """The id of Gemma's one token for `text` (both runtimes read the same vocabulary)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DATA_DIR / "models" / "gemma-3-270m")
    [token] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return token


async def test_a_frequency_penalty_makes_repetition_rarer(stub):
    prompt = "one one one one one one one one"
    free = await stub.GenerateText(
        pb.GenerateTextRequest(model=TRANSFORMERS, prompt=prompt, config=options.GenerationConfig(max_tokens=16))
    )
    penalised = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=TRANSFORMERS, prompt=prompt, config=options.GenerationConfig(max_tokens=16, frequency_penalty=2.0)
        )
    )
    words = lambda text: text.split()  # noqa: E731
    assert len(set(words(penalised.text))) > len(set(words(free.text)))


async def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_field(stub):
    bad = schema_format({"type": "object", "properties": {"a": {"type": "nonsense"}}})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateText(
            pb.GenerateTextRequest(model=TRANSFORMERS, prompt="x", config=options.GenerationConfig(response_format=bad))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["param"].startswith("response_format")


async def test_a_tool_choice_naming_no_tool_is_a_400(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(
            pb.ChatRequest(
                model=TRANSFORMERS,
                messages=[user("Hi")],
                tools=TOOLS,
                tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_FUNCTION, function_name="nope"),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["param"] == "tool_choice"


@pytest.mark.parametrize("model", RUNTIMES)
async def test_sampled_answers_under_a_strict_schema_all_validate(stub, model):
    """Sampling (temperature 1, a seed each) takes the model off its likeliest path; every
    answer still parses and validates (`make bench` runs 200 per runtime)."""
    for seed in range(12):
        reply = await stub.GenerateText(
            pb.GenerateTextRequest(
                model=model,
                prompt="A person, as JSON:",
                config=options.GenerationConfig(
                    max_tokens=120, temperature=1.0, seed=seed, response_format=schema_format(PERSON)
                ),
            )
        )
        jsonschema.validate(json.loads(reply.text), PERSON)


async def test_constrained_requests_share_the_batch_with_each_other_and_free_ones(stub):
    """On transformers, requests under a grammar decode in the continuous batch (each row
    masked by its own grammar), side by side with free requests: all answers validate,
    and the passes held several sequences."""
    import asyncio

    from prometheus_client import REGISTRY

    def passes() -> tuple[float, float]:
        labels = {"model": TRANSFORMERS}
        count = REGISTRY.get_sample_value("infermesh_inference_batch_size_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("infermesh_inference_batch_size_sum", labels) or 0.0

    before = passes()
    shaped = [
        stub.GenerateText(
            pb.GenerateTextRequest(
                model=TRANSFORMERS,
                prompt=f"Person number {i}, as JSON:",
                config=options.GenerationConfig(max_tokens=120, temperature=1.0, response_format=schema_format(PERSON)),
            )
        )
        for i in range(4)
    ]
    free = [
        stub.GenerateText(
            pb.GenerateTextRequest(
                model=TRANSFORMERS, prompt="Once upon a time", config=options.GenerationConfig(max_tokens=24)
            )
        )
    ]
    replies = await asyncio.gather(*shaped, *free)
    for reply in replies[:4]:
        jsonschema.validate(json.loads(reply.text), PERSON)
    assert replies[4].text and replies[4].usage.output_tokens == 24
    after = passes()
    assert (after[1] - before[1]) / (after[0] - before[0]) > 2  # sequences per pass, on average
