"""Payload filters: the API's Filter message as a plain predicate over a payload (a dict).

A condition on a key the payload lacks is false; `equals` compares JSON values as JSON
does (1 == 1.0, never "1"); `range` matches numbers only (not booleans)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format

from infermesh.vector.v1 import vector_service_pb2 as pb

Predicate = Callable[[Mapping[str, Any]], bool]


def predicate(spec: pb.Filter) -> Predicate:
    kind = spec.WhichOneof("kind")
    if kind == "field":
        return _condition(spec.field)
    if kind == "all":
        parts = [predicate(f) for f in spec.all.filters]
        return lambda payload: all(p(payload) for p in parts)
    if kind == "any":
        parts = [predicate(f) for f in spec.any.filters]
        return lambda payload: any(p(payload) for p in parts)
    if kind == "not":
        inner = predicate(getattr(spec, "not"))
        return lambda payload: not inner(payload)
    return lambda payload: True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _condition(condition: pb.FieldCondition) -> Predicate:
    key = condition.key
    which = condition.WhichOneof("condition")
    if which == "equals":
        wanted = json_format.MessageToDict(condition.equals)
        return lambda payload: key in payload and _same(payload[key], wanted)
    if which == "in":
        options = json_format.MessageToDict(getattr(condition, "in"))
        return lambda payload: key in payload and any(_same(payload[key], o) for o in options)
    bounds = condition.range
    tests: list[Callable[[float], bool]] = []
    if bounds.HasField("gt"):
        tests.append(lambda v, b=bounds.gt: v > b)
    if bounds.HasField("gte"):
        tests.append(lambda v, b=bounds.gte: v >= b)
    if bounds.HasField("lt"):
        tests.append(lambda v, b=bounds.lt: v < b)
    if bounds.HasField("lte"):
        tests.append(lambda v, b=bounds.lte: v <= b)

    def in_range(payload: Mapping[str, Any]) -> bool:
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return all(test(value) for test in tests)

    return in_range
