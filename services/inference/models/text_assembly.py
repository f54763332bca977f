"""From generated token ids to the text chunks a caller sees: incremental decoding,
stop sequences, end-of-sequence, and usage. Shared by every generation path."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from infermesh_inference.models.base import FinishReason, TextChunk, Usage
from infermesh_inference.models.text_stream import IncrementalDecoder, StopSequenceFilter


class TextAssembler:
    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        eos_ids: set[int],
        stop_sequences: Sequence[str],
        input_tokens: int,
        max_tokens: int,
    ) -> None:
        self._decoder = IncrementalDecoder(decode)
        self._stops = StopSequenceFilter(stop_sequences)
        self._eos = eos_ids
        self._max_tokens = max_tokens
        self.usage = Usage(input_tokens=input_tokens)
        self.finish: FinishReason | None = None

    def push(self, token: int) -> str:
        """Text to emit for one generated token; sets `finish` when generation must end."""
        if self.finish is not None:
            return ""
        self.usage.output_tokens += 1
        if token in self._eos:
            self.finish = FinishReason.STOP
            return ""
        text = self._stops.push(self._decoder.push(token))
        if self._stops.stopped:
            self.finish = FinishReason.STOP
        elif self.usage.output_tokens >= self._max_tokens:
            self.finish = FinishReason.LENGTH
        return text

    def last_chunk(self) -> TextChunk:
        """The final chunk: held-back text, the finish reason and usage."""
        return TextChunk(self._stops.flush(), finish_reason=self.finish or FinishReason.LENGTH, usage=self.usage)
