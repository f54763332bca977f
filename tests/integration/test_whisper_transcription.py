"""Speech to text on the inference server's core with the real Whisper base model
(faster-whisper, int8 on CPU): speech made by a real TTS voice comes back word for word,
and what is not sound this server takes is refused before the model hears it."""

from __future__ import annotations

import io
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.backend.types import TranscriptionParams
from services.inference.core import EmbedBatching, InferenceCore
from services.inference.models.builtin import BUILTIN_SPECS, WHISPER_BASE_ID, BuildOptions, build_model
from services.inference.repository import ModelRepository
from services.runtime.errors import DomainError
from support.paths import data_dir
from support.speech import SENTENCE, spoken, words


@pytest.fixture(scope="module")
async def core():
    options = BuildOptions(data_dir=data_dir(), device="cpu", dtype="auto", max_context=2048, threads=2)
    model = build_model(BUILTIN_SPECS[WHISPER_BASE_ID], options)
    executor = ThreadPoolExecutor(2)
    repository = ModelRepository([model], executor, max_concurrent=1)
    core = InferenceCore(repository, executor, 64, EmbedBatching(8, 0.001, 64), max_audio_seconds=20)
    await repository.load(WHISPER_BASE_ID)
    yield core
    await core.close()
    await repository.stop_all()
    executor.shutdown()


async def test_speech_is_transcribed_word_for_word_with_its_timing(core):
    transcript = await core.transcribe(
        WHISPER_BASE_ID, spoken(), "audio/wav", TranscriptionParams(word_timestamps=True)
    )
    assert words(transcript.text) == words(SENTENCE)
    assert transcript.language == "en"  # detected
    assert 2.0 < transcript.duration_seconds < 5.0
    assert transcript.usage.output_tokens >= len(words(SENTENCE))
    timed = [w for s in transcript.segments for w in s.words]
    assert [w.word.strip(" .").lower() for w in timed] == words(SENTENCE)
    assert all(a.start <= b.start for a, b in zip(timed, timed[1:], strict=False))
    assert timed[-1].end <= transcript.duration_seconds + 0.1


def wav_of(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((samples * 32767).astype("<i2").tobytes())
    return out.getvalue()


@pytest.mark.parametrize(
    ("audio", "mime_type", "reason"),
    [
        (b"this is not audio at all" * 20, "audio/wav", "INVALID_AUDIO"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png", "UNSUPPORTED_MEDIA_TYPE"),
        (wav_of(np.zeros(16000 * 25, dtype=np.float32)), "audio/wav", "AUDIO_TOO_LONG"),  # 25 s > 20 s
        (wav_of(np.zeros(0, dtype=np.float32)), "audio/wav", "INVALID_AUDIO"),  # no sound in it
    ],
    ids=["garbage", "an image", "too long", "empty"],
)
async def test_what_is_not_sound_it_takes_is_refused_naming_why(core, audio, mime_type, reason):
    with pytest.raises(DomainError) as refused:
        await core.transcribe(WHISPER_BASE_ID, audio, mime_type, TranscriptionParams())
    assert refused.value.reason == reason and refused.value.status_code == 3  # INVALID_ARGUMENT: a 400


async def test_an_unknown_language_is_refused_not_a_server_error(core):
    with pytest.raises(DomainError) as refused:
        await core.transcribe(WHISPER_BASE_ID, spoken(), "audio/wav", TranscriptionParams(language="xx"))
    assert refused.value.reason == "UNSUPPORTED_LANGUAGE"
