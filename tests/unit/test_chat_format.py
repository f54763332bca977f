"""The chat prompt for base models (Gemma 3 270M base has no chat template)."""

from infermesh_inference.models.chat_format import base_model_chat_prompt


def test_transcript_ends_with_the_assistant_turn_and_stops_at_the_next_user_turn():
    prompt, stops = base_model_chat_prompt(
        [
            ("system", "You answer in one word."),
            ("user", "Capital of France?"),
            ("assistant", "Paris"),
            ("user", "Of Italy?"),
        ]
    )
    assert prompt.startswith("You answer in one word.\n")
    assert prompt.endswith("User: Capital of France?\nAssistant: Paris\nUser: Of Italy?\nAssistant:")
    assert "\nUser:" in stops


def test_a_default_preamble_when_there_is_no_system_message():
    prompt, _ = base_model_chat_prompt([("user", "Hi")])
    assert "assistant" in prompt.splitlines()[0].lower()
