"""OpenAI transcription requests (multipart/form-data, as the SDKs send them) into the
mesh's TranscribeRequest, and transcripts into OpenAI's response formats: what is asked
for arrives or is refused by name, and malformed forms are 400s, not server errors."""

from __future__ import annotations

import json

import httpx
import pytest

from infermesh.inference.v1 import inference_service_pb2 as inference_pb
from infermesh.router.v1 import router_messages_pb2 as pb
from services.router import openai_replies as reply
from services.router import openai_schema as oa
from services.runtime import multipart_form
from services.runtime.errors import InvalidArgument

AUDIO = b"RIFF....WAVEfmt \r\n--not-a-boundary\r\n"  # bytes that look like a boundary must survive


def form(files=None, **fields) -> tuple[str, bytes]:
    """A multipart body exactly as httpx (the OpenAI SDK's HTTP client) encodes one."""
    files = {"file": ("speech.wav", AUDIO, "audio/wav")} if files is None else files
    request = httpx.Request("POST", "http://mesh/v1/audio/transcriptions", data=fields, files=files)
    return request.headers["content-type"], request.read()


def transcription_request(files=None, **fields) -> pb.TranscribeRequest:
    parts = multipart_form.parse(*form(files, **fields))
    values, upload = multipart_form.form_fields(parts)
    return oa.parse_fields(oa.TranscriptionRequest, values).to_proto(upload.data, upload.content_type)


def refusal(files=None, **fields) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        transcription_request(files, **fields)
    return caught.value


def test_the_form_arrives_whole_in_the_request():
    request = transcription_request(
        model="whisper-base",
        language="fr",
        prompt="Bonjour",
        temperature="0.2",
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    assert (request.model, request.language, request.prompt) == ("whisper-base", "fr", "Bonjour")
    assert request.audio == AUDIO and request.mime_type == "audio/wav"
    assert request.temperature == pytest.approx(0.2) and request.word_timestamps


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("include[]", "logprobs"),
        ("chunking_strategy", "auto"),
        ("known_speaker_names[]", "alice"),
        ("diarize", "true"),  # not OpenAI's at all
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(field, value):
    error = refusal(model="whisper-base", **{field: value})
    assert error.metadata["param"] == field.removesuffix("[]")


def test_a_streamed_transcript_is_text_as_openai_says():
    error = refusal(model="whisper-base", stream="true", response_format="verbose_json")
    assert error.metadata["param"] == "stream"


def test_word_timestamps_need_the_verbose_format_as_openai_says():
    error = refusal(model="whisper-base", **{"timestamp_granularities[]": "word"})
    assert error.metadata["param"] == "timestamp_granularities"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "whisper-base", "response_format": "mp3"}, "response_format"),
        ({"model": "whisper-base", "temperature": "2"}, "temperature"),
        ({"model": "whisper-base", "language": ["en", "fr"]}, "language"),  # given twice
        ({}, "model"),
    ],
)
def test_bad_fields_are_400s_naming_them(fields, param):
    assert refusal(**fields).metadata["param"] == param


def test_a_form_without_its_file_is_refused_naming_it():
    assert refusal(files={"other": ("x.wav", AUDIO, "audio/wav")}, model="whisper-base").metadata["param"] == "file"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"model": "whisper-base"}'),
        ("multipart/form-data", b"--x\r\n"),  # no boundary
        (form(model="whisper-base")[0], form(model="whisper-base")[1][:-30]),  # cut short
        (form(model="whisper-base")[0], b"garbage"),
        ("\U00107090", b""),  # a content type HTTP cannot carry (found by the fuzzer: was a 500)
    ],
    ids=["json", "no boundary", "truncated", "garbage", "not latin-1"],
)
def test_a_body_that_is_not_a_whole_form_is_a_clear_400(content_type, body):
    with pytest.raises(InvalidArgument) as caught:
        multipart_form.parse(content_type, body)
    assert caught.value.reason == "INVALID_MULTIPART"


ANSWER = pb.TranscribeResponse(
    text="Hello there. General Kenobi.",
    language="en",
    duration_seconds=3661.5,
    segments=[
        inference_pb.TranscriptSegment(
            id=0,
            start=0.0,
            end=1.25,
            text=" Hello there.",
            tokens=[1, 2],
            words=[inference_pb.TranscriptWord(word=" Hello", start=0.0, end=0.5, probability=0.9)],
        ),
        inference_pb.TranscriptSegment(id=1, start=3600.0, end=3661.5, text=" General Kenobi.", tokens=[3]),
    ],
    model="whisper-base",
)


def test_the_response_formats_are_openais():
    kind, body = reply.transcription(ANSWER, "json", words=False, segments=False)
    assert kind == "application/json"
    assert json.loads(body) == {"text": ANSWER.text, "usage": {"type": "duration", "seconds": 3662}}
    assert reply.transcription(ANSWER, "text", False, False) == ("text/plain; charset=utf-8", ANSWER.text + "\n")
    srt = reply.transcription(ANSWER, "srt", False, False)[1]
    assert (
        srt == "1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n2\n01:00:00,000 --> 01:01:01,500\nGeneral Kenobi.\n"
    )
    assert reply.transcription(ANSWER, "vtt", False, False)[1].startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\n")
    verbose = json.loads(reply.transcription(ANSWER, "verbose_json", words=True, segments=False)[1])
    assert verbose["words"] == [{"word": "Hello", "start": 0.0, "end": 0.5}] and "segments" not in verbose
    verbose = json.loads(reply.transcription(ANSWER, "verbose_json", words=False, segments=False)[1])
    assert [s["text"] for s in verbose["segments"]] == [" Hello there.", " General Kenobi."]
    assert (verbose["language"], verbose["duration"], verbose["task"]) == ("en", 3661.5, "transcribe")
