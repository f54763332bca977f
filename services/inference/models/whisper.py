"""Speech to text with Whisper on CTranslate2 (faster-whisper): int8 on CPU, float16 on
CUDA. The audio arrives decoded and checked (services/backend/audio.py); the model
transcribes it in segments, with Whisper's own voice activity and temperature fallback
heuristics left as faster-whisper sets them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from services.backend.audio import SAMPLE_RATE
from services.backend.types import Capability, Segment, Transcript, TranscriptionParams, Usage, Word
from services.inference.models.base import CancelToken, ServedModel
from services.runtime.errors import InvalidArgument


class WhisperTranscriber(ServedModel):
    capabilities = frozenset({Capability.TRANSCRIPTION})

    def __init__(self, model_id: str, weights: Callable[[], Path], device: str, threads: int) -> None:
        super().__init__()
        self.model_id = model_id
        self._weights = weights
        self._threads = threads
        self.device = device
        self.dtype = "float16" if device.startswith("cuda") else "int8"
        self.context_length = 448  # Whisper's decoder positions: the most tokens per 30 s window
        self._model = None
        self._bytes = 0

    def load(self) -> None:
        from faster_whisper import WhisperModel

        path = self._weights()
        device, _, index = self.device.partition(":")
        self._model = WhisperModel(
            str(path),
            device=device,
            device_index=int(index or 0),
            compute_type=self.dtype,
            cpu_threads=self._threads,
        )
        self._bytes = self.estimate_bytes()

    def estimate_bytes(self) -> int:
        # The weights are stored in float16; int8 holds about half of them, float16 all.
        size = (self._weights() / "model.bin").stat().st_size
        return size // 2 if self.dtype == "int8" else size

    def memory_bytes(self) -> int:
        return self._bytes if self._model is not None else 0

    def stop(self) -> None:
        self._model = None

    def warmup(self) -> None:
        self.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), TranscriptionParams(language="en"))

    def transcribe(self, samples: np.ndarray, params: TranscriptionParams) -> Transcript:
        pieces = list(self.transcribe_stream(samples, params, CancelToken()))
        segments = tuple(segment for piece in pieces for segment in piece.segments)
        text = "".join(s.text for s in segments).strip()
        last = pieces[-1]
        return Transcript(text, last.language, last.duration_seconds, segments, last.usage)

    def transcribe_stream(
        self, samples: np.ndarray, params: TranscriptionParams, cancel: CancelToken
    ) -> Iterator[Transcript]:
        """The transcript a segment at a time, as Whisper decodes them (each piece's text
        is its segment's), then a last piece with the usage and no segment. Stops at the
        next segment once `cancel` is set."""
        assert self._model is not None, "load() first"
        if params.language is not None and params.language not in self._model.supported_languages:
            raise InvalidArgument(
                f"language {params.language!r} is not one Whisper knows; use an ISO-639-1 code such as "
                "'en', 'fr' or 'de', or leave it out to detect the language",
                reason="UNSUPPORTED_LANGUAGE",
                param="language",
                language=params.language,
            )
        pieces, info = self._model.transcribe(
            samples,
            language=params.language,
            initial_prompt=params.prompt or None,
            # 0 (the default) keeps Whisper's fallback to higher temperatures when a
            # window decodes badly; another value is the caller's and is used alone.
            temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if params.temperature == 0 else params.temperature,
            word_timestamps=params.word_timestamps,
            beam_size=5,
        )
        language, duration = info.language, round(info.duration, 3)
        tokens = 0
        for i, s in enumerate(pieces):  # a generator: each step runs the model on the next window
            if cancel.cancelled:
                return
            segment = Segment(
                id=i,
                start=round(s.start, 3),
                end=round(s.end, 3),
                text=s.text,
                tokens=tuple(s.tokens),
                temperature=s.temperature or 0.0,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
                words=tuple(Word(w.word, round(w.start, 3), round(w.end, 3), w.probability) for w in s.words or ()),
            )
            tokens += len(segment.tokens)
            yield Transcript(segment.text, language, duration, (segment,))
        yield Transcript("", language, duration, (), Usage(output_tokens=tokens))
