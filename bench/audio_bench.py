"""`make bench`: speech, in this process on the model objects the inference server uses.

- text to speech (Piper, en_US joe): seconds of compute per second of audio made (the
  real-time factor; under 1 is faster than real time) and the time to the first
  sentence's bytes, for MP3 and WAV;
- speech to text (Whisper base, int8, beam 5): the real-time factor on that speech,
  rounds interleaved, and the word error rate against the text that was spoken.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)

from services.backend.audio import decode  # noqa: E402
from services.backend.types import SpeechParams, TranscriptionParams  # noqa: E402
from services.inference.models.base import CancelToken  # noqa: E402
from services.inference.models.builtin import (  # noqa: E402
    BUILTIN_SPECS,
    PIPER_JOE_ID,
    WHISPER_BASE_ID,
    BuildOptions,
    build_model,
)

PASSAGE = (
    "The mesh routes every call to a model that can answer it. When a backend fails, the router tries "
    "the next one in the registry's order. Operators load and unload models while the mesh keeps serving. "
    "Every request is metered: tokens, seconds of audio, characters spoken, and what it all costs."
)


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word-level edit distance over the reference's length."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1] / max(len(reference), 1)


def speak(voice, audio_format: str) -> tuple[bytes, float, float, float]:
    """(audio, seconds to the first bytes, seconds in all, seconds of audio)."""
    started = time.perf_counter()
    first, parts, seconds = None, [], 0.0
    for chunk in voice.speak(PASSAGE, SpeechParams(format=audio_format), CancelToken()):
        first = first if first is not None else time.perf_counter() - started
        parts.append(chunk.audio)
        seconds = chunk.duration_seconds or seconds  # on the last piece
    return b"".join(parts), first, time.perf_counter() - started, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    options = BuildOptions(data_dir=ROOT / ".data", device="cpu", dtype="auto", max_context=2048, threads=threads)
    voice, whisper = (build_model(BUILTIN_SPECS[m], options) for m in (PIPER_JOE_ID, WHISPER_BASE_ID))
    voice.load()
    whisper.load()
    voice.warmup()
    whisper.warmup()
    print(f"audio bench on {cpu_name()} ({threads} threads), {args.rounds} rounds, a {len(PASSAGE)}-character passage")

    tts = {"mp3": [], "wav": []}
    stt, errors = [], []
    for _ in range(args.rounds):
        for audio_format in tts:
            audio, first, total, seconds = speak(voice, audio_format)
            tts[audio_format].append((first, total / seconds, seconds))
        sound = decode(audio, "audio/wav", max_seconds=600)
        started = time.perf_counter()
        transcript = whisper.transcribe(sound.samples, TranscriptionParams(language="en"))
        stt.append((time.perf_counter() - started) / sound.seconds)
        errors.append(word_error_rate(words(PASSAGE), words(transcript.text)))

    for audio_format, runs in tts.items():
        first = statistics.median(r[0] for r in runs)
        factor = statistics.median(r[1] for r in runs)
        print(
            f"text to speech, {audio_format}: {runs[0][2]:.1f}s of audio, real-time factor {factor:.3f} "
            f"({1 / factor:.0f}x faster than real time), first bytes after {first * 1000:.0f} ms"
        )
    print(
        f"speech to text (whisper-base int8, beam 5): real-time factor {statistics.median(stt):.3f} "
        f"({1 / statistics.median(stt):.1f}x faster than real time), word error rate {statistics.median(errors):.1%}"
    )


if __name__ == "__main__":
    main()
