"""From generated token ids to the text chunks a caller sees: incremental decoding,
stop sequences, end-of-sequence, usage, and each token's log probability lined up
with the text it added. Shared by every generation path."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from services.backend.types import FinishReason, TextChunk, TokenLogprob, Usage
from services.inference.models.text_stream import IncrementalDecoder, StopSequenceFilter


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
        # Log probabilities wait until the text their token added has been let through
        # (a stop sequence may hold it back, and swallow it): [characters not yet let
        # through, entry, whether some were].
        self._waiting: deque[list] = deque()
        self._ready: list[TokenLogprob] = []

    def push(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Text to emit for one generated token; sets `finish` when generation must end."""
        if self.finish is not None:
            return ""
        self.usage.output_tokens += 1
        if token in self._eos:
            self.finish = FinishReason.STOP
            return ""
        piece = self._decoder.push(token)
        if logprob is not None:
            # The token's text is what it added to the answer (a token that ends inside
            # a character adds nothing until the next one completes it).
            self._waiting.append([len(piece), replace(logprob, token=piece), False])
        text = self._release(self._stops.push(piece))
        if self._stops.stopped:
            self.finish = FinishReason.STOP
        elif self.usage.output_tokens >= self._max_tokens:
            self.finish = FinishReason.LENGTH
        return text

    def end(self, reason: FinishReason = FinishReason.STOP) -> None:
        """End generation from outside (a grammar that is complete)."""
        if self.finish is None:
            self.finish = reason

    def take_logprobs(self) -> list[TokenLogprob]:
        """Entries of the tokens whose text has been emitted since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def last_chunk(self) -> TextChunk:
        """The final chunk: held-back text, the finish reason and usage."""
        text = self._release(self._stops.flush())
        # What a stop sequence swallowed is not part of the answer: its tokens' entries go
        # with it, except a token that added some of the answer too.
        self._ready += [entry for _, entry, started in self._waiting if started]
        self._waiting.clear()
        return TextChunk(
            text, finish_reason=self.finish or FinishReason.LENGTH, usage=self.usage, logprobs=self.take_logprobs()
        )

    def _release(self, text: str) -> str:
        emitted = len(text)
        while self._waiting and emitted >= self._waiting[0][0]:
            emitted -= self._waiting[0][0]
            self._ready.append(self._waiting.popleft()[1])
        if self._waiting and emitted:
            self._waiting[0][0] -= emitted
            self._waiting[0][2] = True
        return text
