"""OpenAI request bodies into the mesh's typed requests (openai_schema.py): what is
honoured arrives in the request, and nothing is dropped without a 400 naming it."""

import base64
import io
import json

import pytest
from PIL import Image

from infermesh.inference.v1 import generation_options_pb2 as options
from services.router import openai_schema as oa
from services.runtime.errors import InvalidArgument

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(schema, /, **body):
    return oa.parse(schema, json.dumps(body).encode())


def refused(schema, /, **body) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        request = parse(schema, **body)
        request.to_protos() if isinstance(request, oa.CompletionRequest) else request.to_proto()
    return caught.value


def test_an_undefined_field_is_refused_by_name():
    error = refused(oa.ChatCompletionRequest, model="m", messages=MESSAGES, guided_json={})
    assert error.reason == "UNKNOWN_PARAMETER" and error.metadata["param"] == "guided_json"


@pytest.mark.parametrize(
    ("field", "value"), [("audio", {"voice": "alloy"}), ("store", True), ("reasoning_effort", "low"), ("n", 17)]
)
def test_what_cannot_be_honoured_is_refused_by_name(field, value):
    error = refused(oa.ChatCompletionRequest, model="m", messages=MESSAGES, **{field: value})
    assert error.metadata["param"] == field


def test_no_op_values_and_hints_parse():
    request = parse(
        oa.ChatCompletionRequest, model="m", messages=MESSAGES, store=False, modalities=["text"], user="u", n=1
    )
    assert request.to_proto().model == "m"


def test_response_format_tools_and_logprobs_reach_the_typed_request():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    schema = {"name": "city", "description": "where", "schema": {"type": "object", "maxLength": 3}, "strict": True}
    proto = parse(
        oa.ChatCompletionRequest,
        model="m",
        messages=MESSAGES,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": schema},
        logprobs=True,
        top_logprobs=2,
        logit_bias={"7": -100},
        frequency_penalty=0.5,
    ).to_proto()
    assert proto.tools[0].name == "f" and proto.tool_choice.function_name == "f"
    assert proto.tool_choice.mode == options.TOOL_CHOICE_MODE_FUNCTION and not proto.parallel_tool_calls
    assert proto.config.response_format.type == options.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (proto.config.response_format.schema_name, proto.config.response_format.description) == ("city", "where")
    assert (proto.config.logprobs, proto.config.top_logprobs, dict(proto.config.logit_bias)) == (True, 2, {7: -100.0})
    assert proto.config.frequency_penalty == 0.5


def test_tool_calls_and_results_in_the_history_are_kept_and_checked():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    history = [
        *MESSAGES,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    proto = parse(oa.ChatCompletionRequest, model="m", messages=history).to_proto()
    assert proto.messages[1].tool_calls[0].arguments == '{"a": 1}' and proto.messages[2].tool_call_id == "c1"
    broken = [*MESSAGES, {"role": "assistant", "tool_calls": [{**call, "function": {"name": "f", "arguments": "[1]"}}]}]
    assert (
        "messages[1].tool_calls[0].function.arguments"
        in refused(oa.ChatCompletionRequest, model="m", messages=broken).metadata["param"]
    )
    orphan = [*MESSAGES, {"role": "tool", "content": "ok"}]
    assert refused(oa.ChatCompletionRequest, model="m", messages=orphan).metadata["param"] == "messages[1]"


def test_token_ids_are_cl100k_base_and_prompt_lists_give_one_request_each():
    requests = parse(oa.CompletionRequest, model="m", prompt=[[15339, 1917], [9906]]).to_protos()
    assert [r.prompt for r in requests] == ["hello world", "Hello"]
    assert parse(oa.EmbeddingRequest, model="m", input=[15339, 1917]).to_proto().inputs == ["hello world"]
    error = refused(oa.EmbeddingRequest, model="m", input=[[15339], [900000]])
    assert error.reason == "INVALID_TOKEN_ID" and error.metadata["param"] == "input[1]"


def data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (2, 2)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_a_chat_with_one_image_becomes_an_image_description():
    content = [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": data_url()}}]
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
    }
    image = parse(oa.ChatCompletionRequest, **body, max_tokens=9).image_request()
    assert (image.mime_type, image.prompt, image.max_tokens) == ("image/png", "Be brief.\n\nWhat is it?", 9)
    assert image.image.startswith(b"\x89PNG")
    with pytest.raises(InvalidArgument) as caught:
        parse(oa.ChatCompletionRequest, **body, seed=3).image_request()
    assert caught.value.metadata["param"] == "seed"


@pytest.mark.parametrize(
    ("field", "value"), [("tool_choice", "auto"), ("parallel_tool_calls", False), ("stream_options", {})]
)
def test_a_field_that_means_nothing_without_another_is_refused_as_openai_does(field, value):
    assert refused(oa.ChatCompletionRequest, model="m", messages=MESSAGES, **{field: value}).metadata["param"] == field
