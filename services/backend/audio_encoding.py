"""Speech encoded as it is made, so the first sentence can play while the next is being
spoken: MP3, Opus (in Ogg), AAC (ADTS), FLAC through FFmpeg's encoders (PyAV); WAV and
raw PCM written directly. Each encoder takes 16-bit mono samples and returns the bytes
that are ready; `finish()` returns the rest."""

from __future__ import annotations

import struct

import av
import numpy as np

from services.backend.types import AudioFormat

MIME_TYPES: dict[AudioFormat, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# FFmpeg's container and encoder for each compressed format, and the sample rate the
# encoder needs (None: the voice's own). Opus runs at 48 kHz.
_FFMPEG = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}
PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz, 16-bit signed little-endian, mono


class _Sink:
    """A write-only, unseekable file for FFmpeg: what it writes waits here to be taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class StreamEncoder:
    def __init__(self, audio_format: AudioFormat, sample_rate: int) -> None:
        self.mime_type = MIME_TYPES[audio_format]
        self._format = audio_format
        self._rate = sample_rate
        self.sample_rate = PCM_RATE if audio_format == "pcm" else sample_rate
        self._header_sent = False
        self._resampler = None
        self._container = None
        if audio_format == "pcm":
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
        elif audio_format in _FFMPEG:
            container, codec, rate = _FFMPEG[audio_format]
            self.sample_rate = rate or sample_rate
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=container)
            self._stream = self._container.add_stream(codec, rate=self.sample_rate, layout="mono")
            self._resampler = av.AudioResampler(
                format=self._stream.codec_context.format.name, layout="mono", rate=self.sample_rate
            )

    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready after these samples (int16, mono, at the voice's rate)."""
        if self._format == "wav":
            header = b"" if self._header_sent else _wav_header(self._rate)
            self._header_sent = True
            return header + samples.astype("<i2").tobytes()
        frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        return self._push(self._resampler.resample(frame))

    def finish(self) -> bytes:
        """The rest: what the resampler and encoder still hold, and the container's end."""
        if self._format == "wav":
            return b"" if self._header_sent else _wav_header(self._rate)
        tail = self._push(self._resampler.resample(None))
        if self._container is None:
            return tail
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return tail + self._sink.take()

    def _push(self, frames: list[av.AudioFrame]) -> bytes:
        if self._container is None:  # pcm: the resampled samples themselves
            return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()


def _wav_header(rate: int) -> bytes:
    """A WAV header for 16-bit mono at `rate` whose sizes say "unknown" (0xFFFFFFFF), as
    streamed WAV is written: readers take the data to the end of the stream."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )
