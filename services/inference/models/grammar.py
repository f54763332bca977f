"""Constrained decoding: the grammars answers must follow, enforced token by token.

llguidance (chosen by measurement: README, "Structured outputs") turns a JSON Schema or
a Lark grammar into a matcher that, before each step, says which tokens of the model's
vocabulary keep the output valid. The runtimes mask every other token out of the
logits before sampling, so even a small base model's answer parses and validates: the
model chooses among valid continuations, never past them.

Grammars are text (llguidance's own serialized form) and do not depend on a model;
matching needs the model's tokenizer, built once per model (a few seconds for a
262k-token vocabulary) and shared by its requests.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import llguidance
import numpy as np

from services.runtime.errors import Internal, InvalidArgument

log = logging.getLogger(__name__)

# JSON as json.dumps writes it, with no freedom in whitespace: a model cannot pad an
# answer with endless blanks, and tool-call parsing sees one layout.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _checked(grammar: str, param: str) -> str:
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise InvalidArgument(
            f"{param} cannot be enforced: {messages[0] if messages else 'invalid grammar'}",
            reason="INVALID_SCHEMA",
            param=param,
        )
    return grammar


def closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others
    (`additionalProperties: false` where it says nothing). What the closed schema accepts,
    the original accepts too, so answers still validate against the caller's schema; a
    model can no longer invent keys until it runs out of tokens (LangChain and Instructor
    send tool schemas that leave it open). Objects inside `allOf` stay as they are
    (closing one part would refuse the other parts' keys)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in ("items", "prefixItems", "anyOf", "oneOf", "additionalProperties", "contains"):
            out[key] = closed(value)
        else:
            out[key] = value
    declared = set(out.get("properties", {}))
    if (
        isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and "patternProperties" not in out
        and not {"allOf", "$ref", "unevaluatedProperties"} & set(out)
        and set(out.get("required", ())) <= declared
    ):
        out["additionalProperties"] = False
    return out


def json_schema_grammar(schema: dict[str, Any], param: str = "response_format.json_schema") -> str:
    """A grammar for JSON that validates against `schema`."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(closed(schema), defaults=JSON_LAYOUT)
    except ValueError as exc:
        raise InvalidArgument(f"{param} is not a JSON Schema: {exc}", reason="INVALID_SCHEMA", param=param) from exc
    return _checked(grammar, param)


def json_object_grammar() -> str:
    """A grammar for any JSON object."""
    return json_schema_grammar({"type": "object"}, param="response_format")


def chat_answer_grammar(schema: dict[str, Any]) -> str:
    """JSON following `schema` as a chat reply, which may open with a space (base models
    write one after "Assistant:"; the core strips it)."""
    return lark_grammar(f'start: " "? answer\nanswer: %json {schema_json(closed(schema))}', param="response_format")


def lark_grammar(lark: str, param: str) -> str:
    return _checked(llguidance.LLMatcher.grammar_from_lark(lark), param)


def schema_json(schema: dict[str, Any]) -> str:
    """A schema as JSON text for embedding in a Lark grammar (`%json {...}`), with the
    fixed layout."""
    return json.dumps({**schema, "x-guidance": JSON_LAYOUT})


class Constraint:
    """One generation's matcher: masks logits, follows the chosen tokens, says when the
    grammar is complete."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self._vocab = tokenizer.vocab_size
        self._check()

    def _check(self) -> None:
        if self._matcher.is_error():
            # The matcher's message shows its parser state (token lists): logged, not sent.
            log.error("constrained decoding failed", extra={"error": self._matcher.get_error()[:2000]})
            raise Internal("constrained decoding failed", reason="GRAMMAR_FAILED")

    def allowed(self) -> np.ndarray:
        """A boolean mask over the tokenizer's vocabulary: the tokens allowed next."""
        mask = np.frombuffer(self._matcher.compute_logit_bias(), dtype=np.uint8) != 0
        self._check()
        return mask

    def mask_scores(self, scores: np.ndarray) -> np.ndarray:
        """`scores` (one row of logits, numpy) with every disallowed token at -inf."""
        allowed = self.allowed()
        scores[: self._vocab][~allowed] = -np.inf
        scores[self._vocab :] = -np.inf  # padding rows some models' heads have
        return scores

    def mask_logits(self, logits):  # torch.Tensor [1, vocab]; torch is not imported here
        import torch

        allowed = torch.from_numpy(self.allowed())
        logits = logits.float()
        logits[..., self._vocab :] = float("-inf")
        logits[..., : self._vocab].masked_fill_(~allowed.to(logits.device), float("-inf"))
        return logits

    def mask_row_(self, row) -> None:  # torch.Tensor [vocab], masked in place
        import torch

        allowed = torch.from_numpy(self.allowed()).to(row.device)
        row[self._vocab :] = float("-inf")
        row[: self._vocab].masked_fill_(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        """Follow the token the model chose."""
        self._matcher.consume_token(token)
        self._check()

    @property
    def complete(self) -> bool:
        """Whether the grammar allows nothing more (the answer is whole)."""
        return self._matcher.is_stopped()


class TokenizerCache:
    """A model's llguidance tokenizer, built once in the background after the model
    loads (so a load is not slower) and waited for by the first constrained request."""

    def __init__(self, build: Callable[[], llguidance.LLTokenizer]) -> None:
        self._build = build
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._run, name="llguidance-tokenizer", daemon=True).start()

    def _run(self) -> None:
        try:
            self._tokenizer = self._build()
        except BaseException as exc:  # noqa: BLE001 - raised to whoever needs it
            self._error = exc
        finally:
            self._ready.set()

    def settle(self) -> None:
        """Wait until the build has ended (before releasing what it reads)."""
        self._ready.wait()

    def get(self) -> llguidance.LLTokenizer:
        self._ready.wait()
        if self._tokenizer is None:
            raise Internal(f"constrained decoding is unavailable: {self._error!r}", reason="GRAMMAR_UNAVAILABLE")
        return self._tokenizer

    def special(self, texts: set[str]) -> set[str]:
        """Which of `texts` the model writes as one special token (Qwen's `<tool_call>`):
        a grammar must name those as tokens, not spell them out."""
        tokenizer = self.get()
        found = set()
        for text in texts:
            ids = tokenizer.tokenize_str(text, parse_special=True)
            if len(ids) == 1 and tokenizer.is_special_token(ids[0]):
                found.add(text)
        return found

    def constraint(self, grammar: str | None) -> Constraint | None:
        return None if grammar is None else Constraint(self.get(), grammar)
