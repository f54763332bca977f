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
import uuid
from typing import Any, Literal

from infermesh_inference.models.base import NO_ARGUMENTS, ToolCallDelta, Tools
from infermesh_inference.models.grammar import lark_grammar, schema_json

OPEN = "<tool_call>\n"
CLOSE = "\n</tool_call>"


def tool_grammar(tools: Tools, answer_schema: dict[str, Any] | None = None) -> str:
    """The grammar of an answer: calls only (required, a named function), or text
    (JSON following `answer_schema` when a response format asks for it) or calls."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": spec.parameters or NO_ARGUMENTS},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for spec in tools.callable_specs()
    ]
    body = calls[0] if len(calls) == 1 else {"anyOf": calls}
    # A named function is called once; otherwise several calls may follow each other.
    repeat = ' ("\\n" call)*' if tools.parallel and tools.choice.mode != "function" else ""
    rules = [
        f"calls: call{repeat}",
        f"call: {json.dumps(OPEN)} body {json.dumps(CLOSE)}",
        f"body: %json {schema_json(body)}",
    ]
    # A reply may open with a space (base models write one after "Assistant:"); the
    # core strips it. Text cannot start with `<` or a blank, so it never hides a call.
    if tools.choice.mode in ("required", "function"):
        rules.insert(0, 'start: " "? calls')
    elif answer_schema is not None:
        rules[:0] = ['start: " "? (answer | calls)', f"answer: %json {schema_json(answer_schema)}"]
    else:
        rules[:0] = ['start: " "? (TEXT | calls)', r"TEXT: /[^<\s](.|\n)*/"]
    return lark_grammar("\n".join(rules), param="tools")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallReader:
    """Splits generated text into the answer's text and its tool calls, as it streams.

    The grammar guarantees the layout, so the reader only follows it: an answer that
    starts with `<` is calls; each call's name is sent once known (with a new id and
    empty arguments), then its arguments as they are generated, which joined are the
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
            if not self._buffer.startswith("<"):
                self._mode = "text"
                out, self._buffer = self._buffer, ""
                return out, []
            self._mode = "calls"
        return "", self._read_calls()

    def _read_calls(self) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        while True:
            if self._state == "open":
                head = "\n" + OPEN if self.calls else OPEN
                start = head + self._PREFIX
                if len(self._buffer) < len(start):
                    return deltas
                self._buffer = self._buffer[len(start) :]
                self._state = "name"
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
                tail = "}" + CLOSE
                if len(self._buffer) < len(tail):
                    return deltas
                self._buffer = self._buffer[len(tail) :]
                self._state = "open"

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
