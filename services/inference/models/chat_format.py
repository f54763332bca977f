"""A chat prompt for base models, which ship no chat template.

A plain transcript with speaker labels is what base models have seen most in
pre-training; generation stops where the model would start the user's next turn.
"""

from __future__ import annotations

SPEAKERS = {"system": None, "user": "User", "assistant": "Assistant"}
STOP_SEQUENCES = ("\nUser:", "\nAssistant:")


def base_model_chat_prompt(messages: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
    system = [content.strip() for role, content in messages if role == "system"]
    preamble = "\n".join(system) if system else "A conversation between a user and a helpful, concise assistant."
    lines = [preamble, ""]
    for role, content in messages:
        if role != "system":
            lines.append(f"{SPEAKERS[role]}: {content.strip()}")
    lines.append("Assistant:")
    return "\n".join(lines), STOP_SEQUENCES
