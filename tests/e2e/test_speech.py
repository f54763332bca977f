"""Text to speech through the front door with the official OpenAI SDK's
`audio.speech.create` (Piper's en_US "joe" voice, loaded by the inference server on its
first request): every format decodes to speech, the audio streams as it is made, and
what the SDK's speech comes back as text through the transcription endpoint."""

from __future__ import annotations

import base64
import io
import time
import wave

import httpx
import numpy as np
import openai
import pytest

from services.backend.audio import decode
from support.meshes import register_model
from support.metrics import metric
from support.polling import eventually
from support.speech import words
from support.sse import sse_events

VOICE_MODEL, VOICE = "piper-en-us-joe", "joe"
TEXT = "Please call Stella. Ask her to bring these things with her from the store."
LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long answer that is spoken one sentence at a time." for n in range(1, 9)
)


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_speech_made_by_the_sdk_is_transcribed_back_to_the_same_words(client, mesh):
    router = mesh.settings.router_metrics_port
    spoken_before = metric(router, "infermesh_router_characters_total", model=VOICE_MODEL)
    speech = client.audio.speech.create(model=VOICE_MODEL, voice=VOICE, input=TEXT)  # mp3, OpenAI's default
    assert speech.response.headers["content-type"] == "audio/mpeg"
    transcript = client.audio.transcriptions.create(
        model="whisper-base", file=("speech.mp3", speech.content, "audio/mpeg")
    )
    assert words(transcript.text) == words(TEXT), transcript.text
    assert metric(router, "infermesh_router_characters_total", model=VOICE_MODEL) - spoken_before == len(TEXT)


@pytest.mark.parametrize(
    ("response_format", "mime_type"),
    [("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac"), ("wav", "audio/wav")],
)
def test_every_format_decodes_to_the_same_speech(client, response_format, mime_type):
    speech = client.audio.speech.create(model=VOICE_MODEL, voice=VOICE, input=TEXT, response_format=response_format)
    assert speech.response.headers["content-type"] == mime_type
    seconds = decode(speech.content, mime_type, max_seconds=60).seconds
    assert 3.0 < seconds < 8.0


def test_pcm_is_24khz_16_bit_mono_and_speed_is_honoured(client):
    normal = client.audio.speech.create(model=VOICE_MODEL, voice=VOICE, input=TEXT, response_format="pcm").content
    fast = client.audio.speech.create(model=VOICE_MODEL, voice=VOICE, input=TEXT, response_format="pcm", speed=2.0)
    samples = np.frombuffer(normal, dtype="<i2")
    assert 3.0 < len(samples) / 24000 < 8.0 and np.abs(samples).max() > 1000  # speech, not silence
    # Twice the speaking rate: phonemes take half as long (the pauses between sentences
    # do not shrink as much), so the audio is a half to two thirds as long.
    assert 0.45 < len(fast.content) / len(normal) < 0.7


def test_the_audio_streams_as_it_is_made(client):
    """The first bytes of a long answer arrive well before its end: each sentence is sent
    once it is spoken."""
    started = time.monotonic()
    arrivals = []
    with client.audio.speech.with_streaming_response.create(
        model=VOICE_MODEL, voice=VOICE, input=LONG_TEXT, response_format="wav"
    ) as response:
        for piece in response.iter_bytes():
            arrivals.append((time.monotonic() - started, len(piece)))
    first, total = arrivals[0][0], arrivals[-1][0]
    print(f"\nspeech of {len(LONG_TEXT)} characters: first bytes after {first:.2f}s, all after {total:.2f}s")
    assert first < total / 2 and len(arrivals) > 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"voice": "alloy"}, "voice"),
        ({"instructions": "Speak like a pirate."}, "instructions"),
        ({"stream_format": "sse"}, "stream_format"),
        ({"speed": 9.0}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(client, extra, param):
    body = {"model": VOICE_MODEL, "voice": VOICE, "input": TEXT, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(**body)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param, refused.value.body


def test_the_native_rest_call_streams_base64_pieces(base_url):
    reply = httpx.post(
        f"{base_url}/v1/synthesize",
        json={"model": VOICE_MODEL, "input": TEXT, "format": "AUDIO_FORMAT_WAV"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    pieces = sse_events(reply)
    audio = b"".join(base64.b64decode(p["audio"]) for p in pieces)
    with wave.open(io.BytesIO(audio)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
    assert pieces[-1]["input_characters"] == len(TEXT) and 3.0 < pieces[-1]["duration_seconds"] < 8.0


def test_speech_and_transcription_through_the_openai_adapter_and_its_fallback(client, base_url, mesh):
    """The OpenAI adapter speaks and transcribes through OpenAI's audio endpoints (here
    this mesh's own front door, so its local voice and Whisper answer behind it); a local
    model that fails falls back to it."""
    register_model(base_url, "remote-voice", "openai", VOICE_MODEL, capabilities=["speech-synthesis"])
    register_model(base_url, "remote-whisper", "openai", "whisper-base", capabilities=["transcription"])
    speech = eventually(
        lambda: client.audio.speech.create(model="remote-voice", voice=VOICE, input=TEXT, response_format="wav"),
        ignoring=(openai.NotFoundError,),  # until the router has the new model from the registry's feed
        timeout=30,
    )
    assert speech.response.headers["x-infermesh-served-by"] == "openai"
    transcript = eventually(
        lambda: client.audio.transcriptions.create(
            model="remote-whisper", file=("speech.wav", speech.content, "audio/wav"), response_format="verbose_json"
        ),
        ignoring=(openai.NotFoundError,),
        timeout=30,
    )
    assert words(transcript.text) == words(TEXT) and transcript.segments and transcript.language == "en"

    # A model deployed only on a backend that is not in the mesh falls back to the adapter's.
    register_model(
        base_url,
        "whisper-nowhere",
        "offline-box",
        "whisper",
        fallbacks=["remote-whisper"],
        capabilities=["transcription"],
    )
    router = mesh.settings.router_metrics_port
    before = metric(router, "infermesh_router_fallbacks_total", model="whisper-nowhere", fallback="remote-whisper")
    reply = eventually(
        lambda: client.audio.transcriptions.with_raw_response.create(
            model="whisper-nowhere", file=("speech.wav", speech.content, "audio/wav")
        ),
        ignoring=(openai.NotFoundError,),
        timeout=30,
    )
    assert words(reply.parse().text) == words(TEXT) and reply.headers["x-infermesh-fallback"] == "true"
    assert (
        metric(router, "infermesh_router_fallbacks_total", model="whisper-nowhere", fallback="remote-whisper")
        == before + 1
    )
