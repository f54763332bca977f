"""Text to speech with Piper (ONNX voices run by ONNX Runtime, espeak-ng phonemes): the
text is spoken sentence by sentence and each sentence is encoded as soon as it is made,
so a client hears the first while the rest is being spoken."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from services.backend.audio_encoding import StreamEncoder
from services.backend.types import Capability, SpeechChunk, SpeechParams, Usage
from services.inference.models.base import CancelToken, ServedModel
from services.runtime.errors import InvalidArgument


class PiperSpeaker(ServedModel):
    capabilities = frozenset({Capability.SPEECH_SYNTHESIS})

    def __init__(self, model_id: str, voice_file: Callable[[], Path], voice_name: str, device: str) -> None:
        super().__init__()
        self.model_id = model_id
        self.voice_name = voice_name  # the one voice this model speaks with
        self._voice_file = voice_file
        self.device = device
        self._voice = None

    def load(self) -> None:
        from piper import PiperVoice

        self._voice = PiperVoice.load(self._voice_file(), use_cuda=self.device.startswith("cuda"))

    def estimate_bytes(self) -> int:
        return self._voice_file().stat().st_size

    def memory_bytes(self) -> int:
        return self.estimate_bytes() if self._voice is not None else 0

    def stop(self) -> None:
        self._voice = None

    def warmup(self) -> None:
        for _ in self.speak("Ready.", SpeechParams(format="wav"), CancelToken()):
            pass

    def speak(self, text: str, params: SpeechParams, cancel: CancelToken) -> Iterator[SpeechChunk]:
        from piper import SynthesisConfig

        assert self._voice is not None, "load() first"
        if params.voice is not None and params.voice != self.voice_name:
            raise InvalidArgument(
                f"voice {params.voice!r} is not one of {self.model_id}'s voices: {self.voice_name}",
                reason="UNKNOWN_VOICE",
                param="voice",
                voice=params.voice,
                model=self.model_id,
            )
        rate = self._voice.config.sample_rate
        encoder = StreamEncoder(params.format, rate)
        samples = 0
        # Piper's length_scale is the inverse of speed: 2 makes speech twice as slow.
        config = SynthesisConfig(length_scale=1.0 / params.speed)
        for sentence in self._voice.synthesize(text, config):
            if cancel.cancelled:
                return
            samples += len(sentence.audio_int16_array)
            if data := encoder.encode(sentence.audio_int16_array):
                yield SpeechChunk(data, encoder.mime_type, encoder.sample_rate)
        yield SpeechChunk(
            encoder.finish(), encoder.mime_type, encoder.sample_rate, Usage(), round(samples / rate, 3), len(text)
        )
