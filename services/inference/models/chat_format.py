"""Chat prompts: a conversation (with any tool calls and tool results in it) as the
messages a model's own chat template takes, or, for base models that ship no template,
as a plain transcript.

A plain transcript with speaker labels is what base models have seen most in
pre-training; generation stops where the model would start the next turn. Tools are
described in the transcript's preamble with the call format tool_calling.py enforces
(Qwen2.5's and Hermes' `<tool_call>` tags), so the grammar and the prompt agree.
"""

from __future__ import annotations

import json
from typing import Any

from services.backend.types import ChatTurn, ResponseFormat, Tools
from services.inference.models.tool_calling import CLOSE, OPEN

SPEAKERS = {"system": None, "user": "User", "assistant": "Assistant", "tool": "Tool"}
STOP_SEQUENCES = ("\nUser:", "\nAssistant:", "\nTool:")


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text  # a caller's malformed history: shown to the model as it was sent


def template_messages(turns: list[ChatTurn]) -> list[dict[str, Any]]:
    """The conversation in the shape chat templates read (OpenAI's messages, with
    arguments as objects, as Hugging Face's templates expect)."""
    messages = []
    for turn in turns:
        message: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in turn.tool_calls
            ]
        if turn.role == "tool":
            message["tool_call_id"] = turn.tool_call_id
        messages.append(message)
    return messages


def _call_text(turn: ChatTurn) -> str:
    calls = [OPEN + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)}) + CLOSE for c in turn.tool_calls]
    return "\n".join([turn.content.strip(), *calls]).strip()


def _tool_preamble(tools: Tools) -> list[str]:
    listed = [json.dumps(spec.as_openai()["function"]) for spec in tools.callable_specs()]
    return [
        "",
        "You can call these functions (their arguments are described by JSON Schema):",
        *listed,
        'To call a function, reply with <tool_call>\n{"name": <function name>, "arguments": <arguments object>}'
        "\n</tool_call>",
    ]


def base_model_chat_prompt(turns: list[ChatTurn], tools: Tools | None = None) -> tuple[str, tuple[str, ...]]:
    system = [turn.content.strip() for turn in turns if turn.role == "system"]
    preamble = "\n".join(system) if system else "A conversation between a user and a helpful, concise assistant."
    lines = [preamble]
    if tools is not None and tools.callable:
        lines += _tool_preamble(tools)
    lines.append("")
    for turn in turns:
        if turn.role == "system":
            continue
        content = _call_text(turn) if turn.tool_calls else turn.content.strip()
        lines.append(f"{SPEAKERS[turn.role]}: {content}")
    lines.append("Assistant:")
    return "\n".join(lines), STOP_SEQUENCES


def with_answer_format(turns: list[ChatTurn], answer: ResponseFormat | None) -> list[ChatTurn]:
    """The conversation with the JSON Schema the answer must follow shown to the model, as
    OpenAI shows it to its models, in the system message (decoding enforces the schema;
    knowing it, the model also fills it in sensibly). JSON-object mode adds nothing: as
    with OpenAI, the caller's own messages say what JSON to write."""
    if answer is None or answer.kind != "json_schema" or not answer.schema:
        return turns
    about = f" ({answer.description})" if answer.description else ""
    note = f"Answer with JSON{about} that follows this JSON Schema:\n{json.dumps(answer.schema)}"
    if turns and turns[0].role == "system":
        return [ChatTurn("system", f"{turns[0].content}\n\n{note}"), *turns[1:]]
    return [ChatTurn("system", note), *turns]
