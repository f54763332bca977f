"""The chat prompt for base models (Gemma 3 270M base has no chat template)."""

import json

from services.backend.types import ChatTurn, ResponseFormat, ToolCallDelta, ToolChoice, Tools, ToolSpec
from services.inference.models.chat_format import base_model_chat_prompt, template_messages, with_answer_format

WEATHER = ToolSpec(
    "get_weather", "The weather in a city.", {"type": "object", "properties": {"city": {"type": "string"}}}
)


def test_transcript_ends_with_the_assistant_turn_and_stops_at_the_next_user_turn():
    prompt, stops = base_model_chat_prompt(
        [
            ChatTurn("system", "You answer in one word."),
            ChatTurn("user", "Capital of France?"),
            ChatTurn("assistant", "Paris"),
            ChatTurn("user", "Of Italy?"),
        ]
    )
    assert prompt.startswith("You answer in one word.\n")
    assert prompt.endswith("User: Capital of France?\nAssistant: Paris\nUser: Of Italy?\nAssistant:")
    assert "\nUser:" in stops


def test_a_default_preamble_when_there_is_no_system_message():
    prompt, _ = base_model_chat_prompt([ChatTurn("user", "Hi")])
    assert "assistant" in prompt.splitlines()[0].lower()


def test_tools_are_described_with_the_call_format_and_calls_and_results_are_in_the_transcript():
    call = ToolCallDelta(0, '{"city": "Paris"}', "call_1", "get_weather")
    turns = [
        ChatTurn("user", "Weather in Paris?"),
        ChatTurn("assistant", "", (call,)),
        ChatTurn("tool", "18 C, sunny", tool_call_id="call_1"),
    ]
    prompt, stops = base_model_chat_prompt(turns, Tools((WEATHER,)))
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    assert 'Assistant: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert prompt.endswith("Tool: 18 C, sunny\nAssistant:")
    assert "\nTool:" in stops


def test_tool_choice_none_leaves_the_tools_out_of_the_prompt():
    prompt, _ = base_model_chat_prompt([ChatTurn("user", "Hi")], Tools((WEATHER,), ToolChoice("none")))
    assert "get_weather" not in prompt


def test_templates_get_openai_shaped_messages_with_arguments_as_objects():
    call = ToolCallDelta(0, '{"city": "Paris"}', "call_1", "get_weather")
    messages = template_messages([ChatTurn("assistant", "", (call,)), ChatTurn("tool", "sunny", tool_call_id="call_1")])
    assert messages[0]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert messages[1] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert json.dumps(messages)  # plain JSON, as Jinja templates take it


def test_a_json_schema_answer_is_shown_to_the_model_in_the_system_message():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    answer = ResponseFormat("json_schema", schema, "city", description="where it is")
    shown = with_answer_format([ChatTurn("system", "Be brief."), ChatTurn("user", "Eiffel Tower?")], answer)
    assert shown[0].role == "system" and shown[0].content.startswith("Be brief.\n\nAnswer with JSON (where it is)")
    assert json.dumps(schema) in shown[0].content and shown[1] == ChatTurn("user", "Eiffel Tower?")
    alone = with_answer_format([ChatTurn("user", "Hi")], answer)
    assert [t.role for t in alone] == ["system", "user"]
    # JSON-object mode leaves the conversation as the caller wrote it (as OpenAI does).
    assert with_answer_format([ChatTurn("user", "Hi")], ResponseFormat("json_object")) == [ChatTurn("user", "Hi")]
