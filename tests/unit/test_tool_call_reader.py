"""Reading tool calls back out of generated text as it streams (tool_calling.py)."""

import json

from services.inference.models.tool_calling import ToolCallReader

TWO_CALLS = (
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris }{", "days": [1, 2]}}\n</tool_call>'
)


def read(text: str, size: int) -> tuple[str, list]:
    reader = ToolCallReader()
    out, deltas = "", []
    for i in range(0, len(text), size):
        piece, found = reader.push(text[i : i + size])
        out, deltas = out + piece, deltas + found
    return out + reader.finish(), deltas


def test_calls_stream_as_a_named_first_piece_then_argument_fragments_that_join_to_valid_json():
    for size in (1, 3, 7, 1000):
        text, deltas = read(TWO_CALLS, size)
        assert text == ""
        firsts = [d for d in deltas if d.id]
        assert [(d.index, d.name) for d in firsts] == [(0, "get_time"), (1, "get_weather")]
        assert all(not d.name for d in deltas if not d.id)
        assert deltas.index(firsts[1]) > deltas.index(firsts[0])  # a call's pieces start with its name
        joined = {i: "".join(d.arguments for d in deltas if d.index == i) for i in (0, 1)}
        assert json.loads(joined[0]) == {}
        assert json.loads(joined[1]) == {"city": 'Pa"ris }{', "days": [1, 2]}


def test_text_answers_pass_through_at_once_and_leading_blanks_are_dropped():
    reader = ToolCallReader()
    assert reader.push(" ") == ("", [])
    assert reader.push(" Hello") == ("Hello", [])
    assert reader.push(" <tool_call> is just text now") == (" <tool_call> is just text now", [])
    assert reader.calls == []


def test_a_call_cut_short_keeps_what_was_generated():
    reader = ToolCallReader()
    _, deltas = reader.push('<tool_call>\n{"name": "f", "arguments": {"a": "unfinis')
    assert reader.calls[0].name == "f" and reader.calls[0].arguments == '{"a": "unfinis'
    # One piece per call in one push, as OpenAI's chunks have it.
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, "f", '{"a": "unfinis')]


def test_bare_json_calls_are_calls_too_and_mix_with_tagged_ones():
    text = '{"name": "get_time", "arguments": {}}\n<tool_call>\n{"name": "f", "arguments": {"a": [1]}}\n</tool_call>'
    for size in (1, 5, 1000):
        answer, deltas = read(text, size)
        assert answer == ""
        names = [d.name for d in deltas if d.id]
        joined = ["".join(d.arguments for d in deltas if d.index == i) for i in (0, 1)]
        assert names == ["get_time", "f"] and joined == ["{}", '{"a": [1]}']
