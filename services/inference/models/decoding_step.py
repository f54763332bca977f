"""What happens to one step's logits before a token is drawn, beyond temperature and
nucleus sampling: OpenAI's logit_bias and presence/frequency penalties, the grammar
mask of constrained decoding, and the log probabilities a caller asked for.

One implementation on a numpy row of logits serves both runtimes (llama.cpp hands its
logits processors numpy arrays; the transformers loop passes its row through here only
when one of these options is set, so plain decoding pays nothing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from services.backend.types import GenerationParams, TokenLogprob, TopLogprob
from services.inference.models.grammar import Constraint


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores.astype(np.float64) - np.max(scores)
    return shifted - np.log(np.sum(np.exp(shifted)))


class DecodingStep:
    """Shapes each step's logits and follows the tokens chosen.

    Penalties count the tokens generated so far (the output, as vLLM does): presence
    subtracts its value once from each token that appeared, frequency subtracts its
    value times the count. Log probabilities are the model's own distribution at the
    step (before penalties, bias and the grammar), as OpenAI reports them.
    """

    def __init__(
        self, params: GenerationParams, constraint: Constraint | None, token_text: Callable[[int], str]
    ) -> None:
        self._params = params
        self._constraint = constraint
        self._token_text = token_text
        self._counts: Counter[int] = Counter()
        self._bias = dict(params.logit_bias)
        self._logprobs: np.ndarray | None = None

    @property
    def active(self) -> bool:
        p = self._params
        return bool(
            self._constraint or self._bias or p.presence_penalty or p.frequency_penalty or p.logprobs is not None
        )

    def shape(self, scores: np.ndarray) -> np.ndarray:
        """Shape one row of logits in place (float32) and return it."""
        if self._params.logprobs is not None:
            self._logprobs = _log_softmax(scores)
        for token, bias in self._bias.items():
            if token < scores.shape[-1]:
                scores[token] += bias
        if self._counts and (self._params.presence_penalty or self._params.frequency_penalty):
            seen = np.fromiter(self._counts.keys(), dtype=np.int64)
            counts = np.fromiter(self._counts.values(), dtype=np.float32)
            scores[seen] -= self._params.presence_penalty + self._params.frequency_penalty * counts
        if self._constraint is not None:
            self._constraint.mask_scores(scores)
        return scores

    def chosen(self, token: int) -> TokenLogprob | None:
        """Follow the token drawn at this step; its log probability when asked for."""
        self._counts[token] += 1
        if self._constraint is not None:
            self._constraint.advance(token)
        if self._logprobs is None:
            return None
        logprobs, self._logprobs = self._logprobs, None
        top: tuple[TopLogprob, ...] = ()
        if k := self._params.logprobs:
            best = np.argpartition(logprobs, -k)[-k:]
            best = best[np.argsort(logprobs[best])[::-1]]
            top = tuple(TopLogprob(self._token_text(int(i)), float(logprobs[i])) for i in best)
        return TokenLogprob(self._token_text(token), float(logprobs[token]), top)

    @property
    def complete(self) -> bool:
        """Whether the grammar has ended the answer."""
        return self._constraint is not None and self._constraint.complete
