"""How a point's payload and the API's filters are laid out in Qdrant, so that Qdrant
filters exactly as filters.py does (the embedded backend's predicate is the reference).

A point's Qdrant payload:
  - each payload key whose value is a scalar (string, number, boolean, null), as given,
    at the top level: Qdrant filters on it natively (and a Qdrant payload index can be
    built on it by name);
  - `_id`: the point's id (Qdrant's point ids are UUIDs: qdrant.py), `_text`: its text;
  - `_json`: {key: canonical JSON text} for each key whose value is an array or an object.

Why arrays and objects are kept apart: Qdrant matches a condition on an array when any
element matches (`tags = "a"` matches ["a", "b"]) and reads `a.b` as a path into objects,
while filters.py compares the whole value (["a", "b"] equals only ["a", "b"]) and keys are
top-level names. With arrays and objects out of the top level, a scalar condition never
meets one (as in filters.py, where it is never equal); and `equals`/`in` with an array or
an object is an exact match on the canonical JSON text (integral floats written as
integers, keys sorted), which is equality as filters.py has it: [1, 2] == [1.0, 2.0].

The three reserved keys cannot be payload keys on this backend (an upsert using one is
INVALID_ARGUMENT); a condition on one matches no point, as it would for any key no point
has. A condition on a key with a double quote in it is INVALID_ARGUMENT: Qdrant's key
syntax has no way to name it.

Conditions, one by one (what filters.py says → what Qdrant is asked):
  - equals a string / a boolean → `MatchValue` (Qdrant keeps booleans, integers and
    strings apart: true never equals 1, "1" never equals 1);
  - equals a number → `Range(gte=n, lte=n)`: `MatchValue` takes integers only and does not
    match 1.0 to 1, a range compares every number as a number (and never a boolean);
  - equals null → `IsNull` (true for a null value; a missing key is not null);
  - equals an array or an object → `MatchValue` on `_json.{key}` (canonical JSON);
  - in [...] → any of the above, one per option (the strings in one `MatchAny`); an empty
    list matches nothing;
  - range → `Range` (numbers only, never booleans: as in filters.py);
  - all / any / not → a nested Filter's must / should / must_not; an empty `all` matches
    everything and an empty `any` nothing (as Python's all() and any(); Qdrant's empty
    `should` would match everything, so it is written as a filter matching no point id).
  A condition on a key a payload lacks is false in Qdrant too, so `not` of it is true.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format
from qdrant_client import models

from infermesh.vector.v1 import vector_service_pb2 as pb
from services.runtime.errors import InvalidArgument
from services.vector.model import StoredPoint

ID_KEY, TEXT_KEY, JSON_KEY = "_id", "_text", "_json"
RESERVED = frozenset({ID_KEY, TEXT_KEY, JSON_KEY})
NOTHING = models.Filter(must=[models.HasIdCondition(has_id=[])])  # matches no point
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_payload(point: StoredPoint) -> dict[str, Any]:
    payload: dict[str, Any] = {ID_KEY: point.id}
    if point.text:
        payload[TEXT_KEY] = point.text
    nested: dict[str, str] = {}
    for key, value in point.payload.items():
        if key in RESERVED:
            raise InvalidArgument(
                f"point {point.id!r}: payload key {key!r} is reserved on the qdrant backend",
                reason="RESERVED_PAYLOAD_KEY",
                id=point.id,
                key=key,
            )
        if isinstance(value, list | dict):
            nested[key] = canonical(value)
        else:
            payload[key] = value
    if nested:
        payload[JSON_KEY] = nested
    return payload


def from_payload(payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(id, text, the caller's payload) of a point's Qdrant payload."""
    user = {key: value for key, value in payload.items() if key not in RESERVED}
    user.update({key: json.loads(text) for key, text in payload.get(JSON_KEY, {}).items()})
    return payload[ID_KEY], payload.get(TEXT_KEY, ""), user


def canonical(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def to_filter(spec: pb.Filter) -> models.Filter:
    translated = _translate(spec)
    return translated if isinstance(translated, models.Filter) else models.Filter(must=[translated])


def _translate(spec: pb.Filter) -> models.Condition:
    kind = spec.WhichOneof("kind")
    if kind == "field":
        return _condition(spec.field)
    if kind == "all":
        return models.Filter(must=[_translate(f) for f in spec.all.filters])
    if kind == "any":
        parts = [_translate(f) for f in spec.any.filters]
        return models.Filter(should=parts) if parts else NOTHING
    if kind == "not":
        return models.Filter(must_not=[_translate(getattr(spec, "not"))])
    return models.Filter()  # no condition: every point


def _condition(condition: pb.FieldCondition) -> models.Condition:
    key = condition.key
    if key in RESERVED:
        return NOTHING
    if '"' in key:
        raise InvalidArgument(
            f"the qdrant backend cannot filter on key {key!r} (it has a double quote)",
            reason="FILTER_UNSUPPORTED",
            key=key,
        )
    which = condition.WhichOneof("condition")
    if which == "equals":
        return _equals(key, json_format.MessageToDict(condition.equals))
    if which == "in":
        options = json_format.MessageToDict(getattr(condition, "in"))
        strings = [o for o in options if isinstance(o, str)]
        parts = [_equals(key, o) for o in options if not isinstance(o, str)]
        if strings:
            parts.append(models.FieldCondition(key=_path(key), match=models.MatchAny(any=strings)))
        return models.Filter(should=parts) if parts else NOTHING
    bounds = condition.range
    return models.FieldCondition(
        key=_path(key),
        range=models.Range(**{b: getattr(bounds, b) for b in ("gt", "gte", "lt", "lte") if bounds.HasField(b)}),
    )


def _equals(key: str, value: Any) -> models.Condition:
    if value is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=_path(key)))
    if isinstance(value, bool | str):
        return models.FieldCondition(key=_path(key), match=models.MatchValue(value=value))
    if isinstance(value, int | float):
        return models.FieldCondition(key=_path(key), range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=f"{JSON_KEY}.{_path(key)}", match=models.MatchValue(value=canonical(value)))


def _path(key: str) -> str:
    """A top-level key in Qdrant's key syntax: quoted unless plain (`a.b` would be a path)."""
    return key if _PLAIN_KEY.fullmatch(key) else f'"{key}"'
