"""Provider adapters against stand-in HTTP servers that speak the providers' documented
wire formats (see tests/support/provider_stand_ins.py: a contract test, since the hosted APIs are
out of reach here): error mapping for each class of failure, retries that honour the
provider's advice and never retry what cannot succeed, keys kept out of errors and logs,
no credentials → NOT_SERVING, and the Gemini adapter's requests and responses."""

from __future__ import annotations

import base64
import json
import logging
import re
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.backend.audio import decode
from support.provider_stand_ins import Reply, StandIn, gemini_default, gemini_error, openai_chat, openai_error
from support.services import provider_server
from support.speech import spoken

pytestmark = pytest.mark.asyncio(loop_scope="session")
OPENAI_KEY = "sk-test-SECRETSECRETSECRET"
GEMINI_KEY = "AIzaTestSecretKey1234567890"


def embeddings_reply(count: int) -> Reply:
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(count)]
    return Reply(200, {"object": "list", "data": data, "model": "e", "usage": {"prompt_tokens": 4, "total_tokens": 4}})


def openai_settings(stand_in: StandIn, **more) -> dict:
    return {"provider": "openai", "openai_api_key": OPENAI_KEY, "openai_base_url": f"{stand_in.url}/v1", **more}


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (openai_error(400, "bad request"), grpc.StatusCode.INVALID_ARGUMENT),
        (openai_error(401, f"Incorrect API key provided: {OPENAI_KEY}"), grpc.StatusCode.UNAUTHENTICATED),
        (openai_error(403, "not allowed"), grpc.StatusCode.PERMISSION_DENIED),
        (openai_error(404, "no such model"), grpc.StatusCode.NOT_FOUND),
        (openai_error(429, "slow down", {"retry-after": "7"}), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (openai_error(500, "oops"), grpc.StatusCode.UNAVAILABLE),
        (openai_error(503, "overloaded"), grpc.StatusCode.UNAVAILABLE),
        (Reply(200, {}, delay=2.0), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_openai_failures_map_to_canonical_codes(reply, code, caplog):
    with StandIn(lambda request: reply).running() as stand_in:
        settings = openai_settings(stand_in, max_attempts=1, request_timeout_seconds=0.5)
        async with provider_server(**settings) as (_, adapter, _health):
            with caplog.at_level(logging.DEBUG):
                error = await failure(adapter.Embed(pb.EmbedRequest(model="e", inputs=["x"])))
    assert error.code() == code, error.details()
    assert OPENAI_KEY not in error.details() and OPENAI_KEY not in caplog.text
    status = rpc_status.from_call(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the provider's advice reaches the caller
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details) and retry.retry_delay.seconds == 7


async def test_retries_wait_as_asked_and_stop_at_what_cannot_succeed():
    with StandIn(lambda request: embeddings_reply(1)).running() as stand_in:
        async with provider_server(**openai_settings(stand_in, max_attempts=3)) as (_, adapter, _health):
            stand_in.script.extend([openai_error(503, "busy"), openai_error(429, "wait", {"retry-after": "1"})])
            started = time.monotonic()
            reply = await adapter.Embed(pb.EmbedRequest(model="e", inputs=["x"]))
            assert len(reply.embeddings) == 1 and len(stand_in.seen) == 3
            assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured

            stand_in.seen.clear()
            stand_in.script.append(openai_error(400, "bad"))
            error = await failure(adapter.Embed(pb.EmbedRequest(model="e", inputs=["x"])))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(stand_in.seen) == 1

            stand_in.seen.clear()
            stand_in.script.extend([openai_error(500, "down")] * 3)
            error = await failure(adapter.Embed(pb.EmbedRequest(model="e", inputs=["x"])))
            assert error.code() == grpc.StatusCode.UNAVAILABLE and len(stand_in.seen) == 3  # then it gives up


async def test_the_openai_adapter_sends_images_as_data_uris():
    with StandIn(lambda request: openai_chat("a red square", 25, 3)).running() as stand_in:
        async with provider_server(**openai_settings(stand_in)) as (_, adapter, _health):
            image = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
            reply = await adapter.DescribeImage(
                pb.DescribeImageRequest(model="vision", image=image, mime_type="image/png", max_tokens=20)
            )
    assert reply.description == "a red square" and (reply.usage.input_tokens, reply.usage.output_tokens) == (25, 3)
    content = stand_in.seen[-1].body["messages"][0]["content"]
    assert content[0]["type"] == "text" and content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0")


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_without_credentials_the_adapter_is_up_but_not_serving_and_says_why(provider):
    async with provider_server(provider=provider) as (app, adapter, health):
        status = await health.Check(health_pb2.HealthCheckRequest(service="infermesh.inference.v1.InferenceService"))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        models = await adapter.ListModels(pb.ListModelsRequest())
        assert models.models and all(m.state == types.MODEL_STATE_FAILED for m in models.models)
        assert all(f"{provider.upper()}_API_KEY is not set" in m.error for m in models.models)
        error = await failure(adapter.GenerateText(pb.GenerateTextRequest(model="m", prompt="x")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert app.problem.startswith(provider.upper())


def gemini_settings(stand_in: StandIn, **more) -> dict:
    return {"provider": "gemini", "gemini_api_key": GEMINI_KEY, "gemini_base_url": stand_in.url, **more}


async def test_the_gemini_adapter_speaks_the_documented_wire_format():
    with StandIn(gemini_default).running() as stand_in:
        async with provider_server(**gemini_settings(stand_in)) as (_, adapter, _health):
            reply = await adapter.GenerateText(
                pb.GenerateTextRequest(
                    model="gemini-test", prompt="one two three four five", config=options.GenerationConfig(max_tokens=3)
                )
            )
            assert reply.text.split() == ["one", "two", "three"]
            assert reply.finish_reason == types.FINISH_REASON_LENGTH
            assert (reply.usage.input_tokens, reply.usage.output_tokens) == (5, 3)
            request = stand_in.seen[-1]
            assert re.fullmatch(r"/v1(beta)?/models/gemini-test:streamGenerateContent\?alt=sse", request.path)
            assert request.headers["x-goog-api-key"] == GEMINI_KEY
            assert request.body["generationConfig"]["maxOutputTokens"] == 3

            chunks = [
                c
                async for c in adapter.StreamGenerateText(
                    pb.GenerateTextRequest(
                        model="gemini-test", prompt="a b c d e f", config=options.GenerationConfig(max_tokens=10)
                    )
                )
            ]
            assert len(chunks) >= 3 and "".join(c.text for c in chunks).split() == list("abcdef")
            assert chunks[-1].usage.output_tokens == 6 and chunks[-1].finish_reason == types.FINISH_REASON_STOP

            chat = await adapter.Chat(
                pb.ChatRequest(
                    model="gemini-test",
                    messages=[
                        pb.ChatMessage(role=types.ROLE_SYSTEM, content="Be brief."),
                        pb.ChatMessage(role=types.ROLE_USER, content="hi there"),
                        pb.ChatMessage(role=types.ROLE_ASSISTANT, content="hello"),
                        pb.ChatMessage(role=types.ROLE_USER, content="bye"),
                    ],
                )
            )
            assert chat.message.content.split() == ["hi", "there", "hello", "bye"]
            sent = stand_in.seen[-1].body
            assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
            assert sent["systemInstruction"]["parts"][0]["text"] == "Be brief."

            embedded = await adapter.Embed(pb.EmbedRequest(model="text-embedding-test", inputs=["ab", "abcd"]))
            assert [list(e.values) for e in embedded.embeddings] == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]
            assert re.fullmatch(r"/v1(beta)?/models/text-embedding-test:batchEmbedContents", stand_in.seen[-1].path)

            image = b"GIF89a" + b"\0" * 100
            described = await adapter.DescribeImage(
                pb.DescribeImageRequest(model="gemini-test", image=image, mime_type="image/gif", prompt="What is it?")
            )
            assert described.description == f"an image of {len(image)} bytes image/gif"


async def test_gemini_failures_map_and_retry_as_google_advises():
    with StandIn(gemini_default).running() as stand_in:
        async with provider_server(**gemini_settings(stand_in, max_attempts=3)) as (_, adapter, _health):
            cases = [
                (gemini_error(400, "INVALID_ARGUMENT", "API key not valid"), grpc.StatusCode.INVALID_ARGUMENT),
                (gemini_error(403, "PERMISSION_DENIED", "denied"), grpc.StatusCode.PERMISSION_DENIED),
                (gemini_error(404, "NOT_FOUND", "no model"), grpc.StatusCode.NOT_FOUND),
            ]
            for reply, code in cases:
                stand_in.script.append(reply)
                error = await failure(adapter.Embed(pb.EmbedRequest(model="m", inputs=["x"])))
                assert error.code() == code and GEMINI_KEY not in error.details()
            stand_in.seen.clear()
            stand_in.script.extend(
                [gemini_error(429, "RESOURCE_EXHAUSTED", "quota", retry_delay="1s"), gemini_error(500, "INTERNAL", "x")]
            )
            started = time.monotonic()
            reply = await adapter.Embed(pb.EmbedRequest(model="m", inputs=["x"]))
            assert len(reply.embeddings) == 1 and len(stand_in.seen) == 3
            assert time.monotonic() - started >= 1.0  # RetryInfo's retryDelay was honoured
            stand_in.script.extend([gemini_error(503, "UNAVAILABLE", "x")] * 3)
            error = await failure(adapter.Embed(pb.EmbedRequest(model="m", inputs=["x"])))
            assert error.code() == grpc.StatusCode.UNAVAILABLE


def error_info_of(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    from services.runtime.errors import error_info

    return error_info(error)


def struct(value: dict):
    from google.protobuf import struct_pb2

    message = struct_pb2.Struct()
    message.update(value)
    return message


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def weather_chat(config: options.GenerationConfig | None = None, **fields) -> pb.ChatRequest:
    return pb.ChatRequest(
        config=config,
        model="gemini-test",
        messages=[pb.ChatMessage(role=types.ROLE_USER, content="Weather in Paris?")],
        tools=[options.Tool(name="get_weather", description="The weather.", parameters=struct(WEATHER))],
        tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_FUNCTION, function_name="get_weather"),
        **fields,
    )


def gemini_call(request) -> Reply:
    """Gemini answering with a function call, as its REST API documents it."""
    candidate = {
        "content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        "finishReason": "STOP",
        "index": 0,
    }
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9}
    return Reply(200, [{"candidates": [candidate], "usageMetadata": usage}], stream=True)


async def test_gemini_gets_tools_and_schemas_in_its_own_terms_and_its_calls_come_back_as_tool_calls():
    with StandIn(gemini_call).running() as stand_in:
        async with provider_server(**gemini_settings(stand_in)) as (_, adapter, _health):
            reply = await adapter.Chat(weather_chat())
            [call] = reply.message.tool_calls
            assert call.name == "get_weather" and call.id and json.loads(call.arguments) == {"city": "Paris"}
            assert reply.finish_reason == types.FINISH_REASON_TOOL_CALLS
            sent = stand_in.seen[-1].body
            [declaration] = sent["tools"][0]["functionDeclarations"]
            # Google's JSON takes field names in camelCase or snake_case (google-genai sends either).
            parameters = declaration.get("parametersJsonSchema") or declaration.get("parameters_json_schema")
            assert declaration["name"] == "get_weather" and parameters == WEATHER
            assert sent["toolConfig"]["functionCallingConfig"] == {
                "mode": "ANY",
                "allowedFunctionNames": ["get_weather"],
            }

            # The call and its result go back to Gemini as function_call/function_response parts.
            history = [
                pb.ChatMessage(role=types.ROLE_USER, content="Weather in Paris?"),
                pb.ChatMessage(role=types.ROLE_ASSISTANT, tool_calls=[call]),
                pb.ChatMessage(role=types.ROLE_TOOL, tool_call_id=call.id, content="sunny"),
            ]
            schema = options.ResponseFormat(type=options.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=struct(WEATHER))
            await adapter.Chat(
                pb.ChatRequest(
                    model="gemini-test", messages=history, config=options.GenerationConfig(response_format=schema)
                )
            )
            sent = stand_in.seen[-1].body
            assert sent["contents"][1]["parts"][0]["functionCall"]["name"] == "get_weather"
            response = sent["contents"][2]["parts"][0]["functionResponse"]
            assert response["name"] == "get_weather" and response["response"] == {"result": "sunny"}
            config = sent["generationConfig"]
            assert config["responseMimeType"] == "application/json"
            assert (config.get("responseJsonSchema") or config.get("response_json_schema")) == WEATHER


async def test_what_gemini_cannot_honour_is_refused_naming_the_field():
    with StandIn(gemini_default).running() as stand_in:
        async with provider_server(**gemini_settings(stand_in)) as (_, adapter, _health):
            for fields, param in (({"logprobs": True}, "logprobs"), ({"logit_bias": {5: 1.0}}, "logit_bias")):
                error = await failure(adapter.Chat(weather_chat(options.GenerationConfig(**fields))))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert error_info_of(error).metadata["param"] == param
            assert not stand_in.seen  # refused before any request


async def test_the_openai_adapter_passes_tools_formats_and_logprobs_through_and_reads_streamed_calls():
    def streamed_call(request) -> Reply:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        first = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        events = [
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}]},
            {
                **head,
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}],
            },
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}}
                ],
            },
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
            "[DONE]",
        ]
        return Reply(200, events, stream=True)

    with StandIn(streamed_call).running() as stand_in:
        async with provider_server(**openai_settings(stand_in)) as (_, adapter, _health):
            request = weather_chat(
                options.GenerationConfig(
                    logprobs=True,
                    top_logprobs=2,
                    frequency_penalty=0.5,
                    logit_bias={7: -100.0},
                    response_format=options.ResponseFormat(type=options.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
                ),
                parallel_tool_calls=False,
            )
            reply = await adapter.Chat(request)
            [call] = reply.message.tool_calls
            assert (call.id, call.name, call.arguments) == ("call_9", "get_weather", '{"city": "Paris"}')
            assert reply.finish_reason == types.FINISH_REASON_TOOL_CALLS
            sent = stand_in.seen[-1].body
            assert sent["tools"][0]["function"]["parameters"] == WEATHER
            assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
            assert sent["parallel_tool_calls"] is False and sent["logit_bias"] == {"7": -100.0}
            assert (sent["logprobs"], sent["top_logprobs"], sent["frequency_penalty"]) == (True, 2, 0.5)
            assert sent["response_format"] == {"type": "json_object"}


async def test_the_gemini_adapter_transcribes_and_speaks_through_gemini_models():
    """Gemini has no audio endpoints: the adapter sends the audio inline with an
    instruction to transcribe it, and asks a TTS model for audio (PCM it encodes into
    the format asked for)."""
    with StandIn(gemini_default).running() as stand_in:
        async with provider_server(**gemini_settings(stand_in)) as (_, adapter, _health):
            audio = spoken()
            transcript = await adapter.Transcribe(
                pb.TranscribeRequest(model="gemini-transcribe-test", audio=audio, mime_type="audio/wav", language="en")
            )
            sent = stand_in.seen[-1]
            assert re.fullmatch(r"/v1(beta)?/models/gemini-transcribe-test:generateContent", sent.path)
            [recording, instruction] = sent.body["contents"][0]["parts"]
            # google-genai sends bytes in URL-safe base64.
            assert (
                base64.urlsafe_b64decode((recording.get("inlineData") or recording.get("inline_data"))["data"]) == audio
            )
            assert "Transcribe the speech" in instruction["text"] and "'en'" in instruction["text"]
            assert transcript.text == f"a recording of {len(audio)} bytes"  # the stand-in's answer, whole
            assert 2.0 < transcript.duration_seconds < 4.0  # read from the audio itself
            assert [(s.start, s.end) for s in transcript.segments] == [(0.0, transcript.duration_seconds)]
            # Word timestamps cannot be had from Gemini: refused by name, nothing sent.
            before = len(stand_in.seen)
            refused = await failure(
                adapter.Transcribe(
                    pb.TranscribeRequest(model="gemini-transcribe-test", audio=audio, word_timestamps=True)
                )
            )
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "word timestamps" in refused.details()
            not_audio = await failure(
                adapter.Transcribe(pb.TranscribeRequest(model="gemini-transcribe-test", audio=b"not audio"))
            )
            assert not_audio.code() == grpc.StatusCode.INVALID_ARGUMENT and len(stand_in.seen) == before

            text = "one two three four five six seven eight"
            request = pb.SynthesizeRequest(
                model="gemini-tts-test", input=text, voice="Puck", format=types.AUDIO_FORMAT_WAV
            )
            pieces = [piece async for piece in adapter.Synthesize(request)]
            config = stand_in.seen[-1].body["generationConfig"]
            assert config["responseModalities"] == ["AUDIO"]
            # google-genai writes the inner names as they are in Python (Google's JSON takes both).
            assert config["speechConfig"]["voice_config"]["prebuilt_voice_config"]["voice_name"] == "Puck"
            speech = decode(b"".join(p.audio for p in pieces), "audio/wav", max_seconds=60)
            assert abs(speech.seconds - 8 * 0.25) < 0.05  # the stand-in's quarter second per word
            assert pieces[-1].duration_seconds == pytest.approx(2.0) and pieces[-1].input_characters == len(text)
            assert {p.mime_type for p in pieces} == {"audio/wav"}
