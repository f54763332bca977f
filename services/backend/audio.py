"""Audio inputs checked and decoded before any model hears them: a media type the server
accepts, a file that decodes to sound, and no longer than the server allows. Decoding is
FFmpeg's (PyAV, as faster-whisper does it): any container and codec it knows, resampled
to the 16 kHz mono that speech models take."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from services.runtime.errors import InvalidArgument

SAMPLE_RATE = 16000
# What OpenAI's transcription endpoint takes (mp3, mp4, mpeg, mpga, m4a, wav, webm), plus
# FLAC, Ogg and AAC, by the media types browsers and SDKs send for them. Empty: the content says.
ACCEPTED_TYPES = frozenset(
    {
        "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
        "audio/mpeg", "audio/mp3", "audio/mpga",
        "audio/mp4", "audio/m4a", "audio/x-m4a", "video/mp4",
        "audio/webm", "video/webm",
        "audio/flac", "audio/x-flac",
        "audio/ogg", "audio/opus",
        "audio/aac", "audio/x-aac",
        "application/octet-stream",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # mono float32 in [-1, 1] at SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def media_type(mime_type: str) -> str:
    """The bare media type of a Content-Type value (`audio/wav; codecs=1` → `audio/wav`)."""
    return mime_type.split(";", 1)[0].strip().lower()


def check_media_type(mime_type: str) -> None:
    if mime_type and media_type(mime_type) not in ACCEPTED_TYPES:
        raise InvalidArgument(
            f"audio of type {mime_type!r} is not accepted; send WAV, MP3, MP4/M4A, WebM, FLAC, Ogg or AAC",
            reason="UNSUPPORTED_MEDIA_TYPE",
            param="file",
            mime_type=mime_type,
        )


def decode(data: bytes, mime_type: str, max_seconds: float) -> Audio:
    """The audio's samples; a clear INVALID_ARGUMENT for anything that is not sound this
    server takes. The container's stated length is checked before decoding, so a file
    that is too long costs no decoding."""
    check_media_type(mime_type)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise _undecodable("it has no audio stream")
            stated = container.duration / av.time_base if container.duration else 0.0
            if stated > max_seconds:
                raise _too_long(stated, max_seconds)
            samples = _resampled(container)
    except av.error.FFmpegError as error:
        raise _undecodable((error.strerror or str(error)).lower()) from None
    if samples.size == 0:
        raise _undecodable("it holds no sound")
    audio = Audio(samples)
    if audio.seconds > max_seconds:  # a container that did not state its length
        raise _too_long(audio.seconds, max_seconds)
    return audio


def _resampled(container: av.container.InputContainer) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = []
    for frame in container.decode(audio=0):
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):  # what the resampler still holds
        chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _undecodable(why: str) -> InvalidArgument:
    return InvalidArgument(f"the audio file could not be decoded: {why}", reason="INVALID_AUDIO", param="file")


def _too_long(seconds: float, limit: float) -> InvalidArgument:
    return InvalidArgument(
        f"the audio is {seconds:.1f}s long; this server transcribes at most {limit:g}s at once",
        reason="AUDIO_TOO_LONG",
        param="file",
        seconds=round(seconds, 1),
        limit=limit,
    )
