"""Grammars for constrained decoding (grammar.py): schemas closed to invented keys
without refusing anything the caller's schema accepts."""

import jsonschema

from services.inference.models.grammar import closed


def test_objects_that_list_their_properties_are_closed_to_others():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "stops": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        },
        "required": ["city"],
    }
    shut = closed(schema)
    assert shut["additionalProperties"] is False
    assert shut["properties"]["stops"]["items"]["additionalProperties"] is False
    assert schema.get("additionalProperties") is None  # the caller's schema is left as it was
    valid = {"city": "Paris", "stops": [{"name": "Lyon"}]}
    jsonschema.validate(valid, shut)
    jsonschema.validate(valid, schema)  # what the closed schema accepts, the original does


def test_what_closing_would_break_is_left_open():
    parts = {"allOf": [{"type": "object", "properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert closed(parts) == parts  # closing one part would refuse the other's keys
    undeclared = {"type": "object", "properties": {"a": {}}, "required": ["b"]}
    assert "additionalProperties" not in closed(undeclared)  # `b` must stay possible
    chosen = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert closed(chosen)["additionalProperties"] == {"type": "integer"}
