"""Speech to text through the front door, the way applications call it: the official
OpenAI SDK's `audio.transcriptions.create` (multipart upload) and the mesh's own REST
call. The speech is real (Piper's voice, tests/support/speech.py) and so is the model
(Whisper base, loaded by the inference server on its first request); what is not sound
the mesh takes is a 400 in OpenAI's shape naming the field."""

from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pytest

from support.metrics import metric
from support.speech import SENTENCE, spoken, words

WHISPER = "whisper-base"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def upload(data: bytes | None = None, name: str = "speech.wav", kind: str = "audio/wav") -> tuple:
    return (name, spoken() if data is None else data, kind)


def test_the_openai_sdk_transcribes_speech_word_for_word(client, mesh):
    router = mesh.settings.router_metrics_port
    heard_before = metric(router, "infermesh_router_audio_seconds_total", model=WHISPER, direction="input")
    reply = client.audio.transcriptions.with_raw_response.create(model=WHISPER, file=upload())
    transcript = reply.parse()
    assert words(transcript.text) == words(SENTENCE)
    assert transcript.usage.type == "duration" and 2 <= transcript.usage.seconds <= 5
    assert reply.headers["x-infermesh-model"] == WHISPER and reply.headers["x-infermesh-served-by"]
    heard = metric(router, "infermesh_router_audio_seconds_total", model=WHISPER, direction="input") - heard_before
    assert 2.0 < heard < 5.0  # the audio's length, metered


def test_verbose_json_has_timed_segments_and_words(client):
    verbose = client.audio.transcriptions.create(
        model=WHISPER, file=upload(), response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert verbose.language == "en" and 2.0 < verbose.duration < 5.0
    assert [w.word.strip(" .").lower() for w in verbose.words] == words(SENTENCE)
    assert verbose.segments[0].start == 0.0 and verbose.segments[-1].end <= verbose.duration + 0.1


def test_subtitles_and_plain_text(client):
    srt = client.audio.transcriptions.create(model=WHISPER, file=upload(), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and words(srt.split("\n", 2)[2]) == words(SENTENCE)
    text = client.audio.transcriptions.create(model=WHISPER, file=upload(), response_format="text")
    assert words(text) == words(SENTENCE)


# About fifty seconds of varied speech: two of Whisper's thirty-second windows
# (repeated sentences would make Whisper fall back to slower decoding at higher temperatures).
LONG_SPEECH = (
    "The morning train left the station a few minutes late. Passengers read newspapers and watched the fields "
    "go by. A small dog slept under one of the seats near the door. At the second stop, a teacher climbed aboard "
    "with a box of books. She talked with an old farmer about the weather and the harvest. Later the sun came out "
    "and the windows grew warm. Children counted cows and horses in the green hills. When the train finally "
    "reached the city, everyone hurried toward the exit. Outside, the streets were full of buses and bicycles. "
    "A baker opened his shop and the smell of fresh bread drifted across the square. Two friends met beside the "
    "fountain and decided to visit the museum. Inside, they looked at old maps, clocks and paintings of ships. "
    "In the afternoon it started to rain, so they waited in a quiet cafe. By evening the clouds had gone and the "
    "lights of the bridge were shining on the river."
)


def test_a_streamed_transcript_arrives_a_segment_at_a_time(client, base_url):
    """stream=True: OpenAI's transcript.text.delta events as Whisper finishes each
    segment (the first window's before the second is decoded), then transcript.text.done
    with the whole text; the native API streams the same segments over REST."""
    audio = spoken(LONG_SPEECH)
    whole = client.audio.transcriptions.create(model=WHISPER, file=upload(audio), language="en")
    started = time.monotonic()
    events = []
    for event in client.audio.transcriptions.create(model=WHISPER, file=upload(audio), language="en", stream=True):
        events.append((time.monotonic() - started, event))
    deltas = [(at, e) for at, e in events if e.type == "transcript.text.delta"]
    done_at, done = events[-1]
    assert done.type == "transcript.text.done" and len(deltas) >= 2
    assert words("".join(e.delta for _, e in deltas)) == words(done.text) == words(whole.text)
    assert done.usage.output_tokens > 0
    print(f"\nsegments after {[round(at, 2) for at, _ in deltas]} s, the whole transcript after {done_at:.2f} s")
    assert deltas[0][0] < 0.9 * done_at  # the first segments did not wait for the last window
    body = {"model": WHISPER, "audio": base64.b64encode(audio).decode(), "mime_type": "audio/wav", "language": "en"}
    with httpx.stream("POST", f"{base_url}/v1/transcribe:stream", json=body, timeout=120) as native:
        pieces = [json.loads(line[len("data: ") :]) for line in native.iter_lines() if line.startswith("data: ")]
    assert len(pieces) == len(deltas) + 1 and pieces[-1]["usage"]["output_tokens"] == done.usage.output_tokens
    assert [p["segments"][0]["text"] for p in pieces[:-1]] == [e.delta for _, e in deltas]


def test_the_native_rest_call_takes_base64_audio(base_url):
    body = {"model": WHISPER, "audio": base64.b64encode(spoken()).decode(), "mime_type": "audio/wav", "language": "en"}
    reply = httpx.post(f"{base_url}/v1/transcribe", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert words(reply.json()["text"]) == words(SENTENCE) and reply.json()["model"] == WHISPER


@pytest.mark.parametrize(
    ("file", "extra", "param", "code"),
    [
        (upload(b"this is not audio" * 64), {}, "file", "INVALID_AUDIO"),
        (upload(b"\x89PNG\r\n\x1a\n" + bytes(64), "photo.png", "image/png"), {}, "file", "UNSUPPORTED_MEDIA_TYPE"),
        (upload(), {"stream": True, "response_format": "srt"}, "stream", "UNSUPPORTED_PARAMETER"),
        (upload(), {"language": "xx"}, "language", "UNSUPPORTED_LANGUAGE"),
    ],
    ids=["not audio", "an image", "stream", "unknown language"],
)
def test_what_the_mesh_cannot_take_is_a_400_in_openais_shape(client, file, extra, param, code):
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model=WHISPER, file=file, **extra)
    error = refused.value.body
    assert refused.value.status_code == 400 and error["param"] == param and error["code"] == code.lower(), error


def test_a_model_that_cannot_transcribe_is_told_so(client):
    with pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(model="all-minilm-l6-v2", file=upload())
    assert refused.value.status_code == 400 and "transcription" in refused.value.message
