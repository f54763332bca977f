"""Tool calls from local models: the grammar that makes them exact, and reading them
back out of the generated text as it streams.

Local models call a tool by writing `<tool_call>\\n{"name": ..., "arguments": {...}}
\\n</tool_call>` (Qwen2.5's and Hermes' trained format, which chat_format.py teaches
base models too). Decoding follows a grammar built from the tools' parameter schemas,
so a call always names a real tool with arguments that validate, and `tool_choice` is
honoured exactly: `required` or a named function can only produce calls; `auto` lets
the model answer in text (which then cannot start with `<`) or call; `none` leaves
tools out of the grammar.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from services.backend.types import NO_ARGUMENTS, ToolCallDelta, Tools, new_call_id
from services.inference.models.grammar import closed, lark_grammar, schema_json

OPEN = "<tool_call>\n"
CLOSE = "\n</tool_call>"


TAGS = frozenset({OPEN.strip(), CLOSE.strip()})


def tool_grammar(tools: Tools, answer_schema: dict[str, Any] | None = None, special: set[str] = frozenset()) -> str:
    """The grammar of an answer: calls only (required, a named function), or text
    (JSON following `answer_schema` when a response format asks for it) or calls.

    A call is the tagged form the chat templates teach, or the bare JSON object small
    models often write instead (Qwen2.5-Coder-0.5B's first choice): both are read as
    calls. A text answer therefore cannot start with `<` or `{` (nor a blank), so it
    never hides a call; with a JSON response format the answer is JSON, and calls must
    be tagged. `special`: the tags the model's tokenizer has as single special tokens
    (Qwen's), which the grammar names as tokens (`<tool_call>`), not as their text."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": closed(spec.parameters or NO_ARGUMENTS)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for spec in tools.callable_specs()
    ]
    body = calls[0] if len(calls) == 1 else {"anyOf": calls}
    # A named function is called once; otherwise several calls may follow each other.
    repeat = ' ("\\n" call)*' if tools.parallel and tools.choice.mode != "function" else ""
    tagged = f'{_tag(OPEN.strip(), special)} "\\n" body "\\n" {_tag(CLOSE.strip(), special)}'
    rules = [
        f"calls: call{repeat}",
        f"call: {tagged}" if answer_schema is not None else f"call: {tagged} | body",
        f"body: %json {schema_json(body)}",
    ]
    # A reply may open with a space (base models write one after "Assistant:"); the
    # core strips it.
    if tools.choice.mode in ("required", "function"):
        rules.insert(0, 'start: " "? calls')
    elif answer_schema is not None:
        rules[:0] = ['start: " "? (answer | calls)', f"answer: %json {schema_json(closed(answer_schema))}"]
    else:
        rules[:0] = ['start: " "? (TEXT | calls)', r"TEXT: /[^<{\s](.|\n)*/"]
    return lark_grammar("\n".join(rules), param="tools")


def _tag(text: str, special: set[str]) -> str:
    return text if text in special else json.dumps(text)


class ToolCallReader:
    """Splits generated text into the answer's text and its tool calls, as it streams.

    The grammar guarantees the layout, so the reader only follows it: an answer that
    starts with `<` or `{` is calls, tagged or bare; each call's name is sent once known
    (with a new id), then its arguments as they are generated, which joined are the
    call's whole JSON arguments (the closing brace of the call's object and the closing
    tag are held back until they can be told apart from the arguments).
    """

    _PREFIX = '{"name": "'
    _AFTER_NAME = '", "arguments": '

    def __init__(self) -> None:
        self._buffer = ""
        self._mode: Literal["?", "text", "calls"] = "?"
        self.calls: list[ToolCallDelta] = []  # whole calls, for the unary answer
        self._state = "open"  # open, name, arguments, close
        self._tagged = False  # the current call's form
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """The text and call pieces that `text` adds."""
        if self._mode == "text":
            return text, []
        self._buffer += text
        if self._mode == "?":
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return "", []
            if self._buffer[0] not in "<{":
                self._mode = "text"
                out, self._buffer = self._buffer, ""
                return out, []
            self._mode = "calls"
        return "", _coalesced(self._read_calls())

    def _read_calls(self) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        while True:
            if self._state == "open" and not self._open():
                return deltas
            if self._state == "name":
                end = self._buffer.find(self._AFTER_NAME)
                if end < 0:
                    return deltas
                name = json.loads(f'"{self._buffer[:end]}"')
                call = ToolCallDelta(index=len(self.calls), id=new_call_id(), name=name)
                self.calls.append(call)
                deltas.append(ToolCallDelta(index=call.index, id=call.id, name=name))
                self._buffer = self._buffer[end + len(self._AFTER_NAME) :]
                self._state = "arguments"
            if self._state == "arguments":
                taken = self._take_arguments()
                if taken:
                    self.calls[-1].arguments += taken
                    deltas.append(ToolCallDelta(index=self.calls[-1].index, arguments=taken))
                if self._state == "arguments":
                    return deltas
            if self._state == "close":
                tail = "}" + (CLOSE if self._tagged else "")
                if len(self._buffer) < len(tail):
                    return deltas
                self._buffer = self._buffer[len(tail) :]
                self._state = "open"

    def _open(self) -> bool:
        """Read up to a call's name (the separator before a later call, its opening tag if
        it has one, and `{"name": "`); False until all of that has arrived."""
        head = "\n" if self.calls else ""
        if len(self._buffer) <= len(head):
            return False
        tagged = self._buffer[len(head)] == "<"
        start = head + (OPEN if tagged else "") + self._PREFIX
        if len(self._buffer) < len(start):
            return False
        self._buffer, self._tagged, self._state = self._buffer[len(start) :], tagged, "name"
        return True

    def _take_arguments(self) -> str:
        """The buffered characters that belong to the arguments object."""
        for i, char in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    taken, self._buffer = self._buffer[: i + 1], self._buffer[i + 1 :]
                    self._state = "close"
                    return taken
        taken, self._buffer = self._buffer, ""
        return taken

    def finish(self) -> str:
        """Text still held when generation ended (an answer too short to tell apart)."""
        if self._mode == "?":
            out, self._buffer = self._buffer, ""
            return out
        return ""


def _coalesced(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """One piece per call (OpenAI's chunks never hold two for the same index)."""
    pieces: dict[int, ToolCallDelta] = {}
    for delta in deltas:
        if delta.index in pieces:
            pieces[delta.index].arguments += delta.arguments
        else:
            pieces[delta.index] = ToolCallDelta(delta.index, delta.arguments, delta.id, delta.name)
    return list(pieces.values())
