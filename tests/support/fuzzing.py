"""Hypothesis strategies that fuzz the front door's REST and gRPC surfaces, derived from
the compiled protobuf descriptors (build/infermesh.binpb, the set Envoy transcodes with):
every HTTP rule of every service the front door transcodes, and every method of those
services over gRPC. A new RPC, field or route is fuzzed with no change here.

Values follow each field's type and its protovalidate rules: three in four are valid
(so requests get past validation into the services), the rest sit just outside the
rules, anywhere in the type's range, or (in JSON) are of another type altogether.

Requests are safe to send to a mesh that other tests share:

- a field bound to a path variable of a method that changes state (any verb but GET)
  never names an existing resource, and the ids the fuzzer gives what it creates start
  with `fuzz-` (an API key created with no id gets one from the registry); real model
  ids appear only in read-only paths and in the model fields of inference calls;
- every generation is capped: a `max_tokens` field is always present, either 1-2 or a
  value the API must refuse, and a message that carries one (GenerationConfig) is never
  left out, so no request starts a long generation;
- undecodable gRPC payloads are built from messages that name no real model, so junk
  bytes cannot turn into a real, uncapped generation.
"""

from __future__ import annotations

import base64
import json
import math
import re
import string
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from buf.validate import validate_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import assume
from hypothesis import strategies as st

from support.paths import DESCRIPTOR_SET, ROOT

FRONT_DOOR = ROOT / "envoy" / "front_door.yaml"

F = FieldDescriptor
CAPS = frozenset({"max_tokens", "max_completion_tokens"})  # fields that bound a generation's work
MODEL_FIELDS = frozenset({"model", "models", "judge_model", "embedding_model"})
FUZZ_PREFIX = "fuzz-"
MAX_URL = 65_000  # httpx refuses longer URLs itself
_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")

# Strings that commonly trip parsers, routers and databases.
SPECIAL_STRINGS = (
    *("", " ", "\x00", "\t\n", "%2F", "%00", "%", "a/b", "..", ".", "*", "-", "@", "null", "0", "-1"),
    *("models/", "models//versions/", "operations/", "\u202e\u0644", "\ufeff", "é" * 64, "😀" * 16),
    *("' OR 1=1 --", '"; DROP TABLE models; --', "${jndi:ldap://x}", "{{7*7}}", "\\"),
    "x" * 5000,
)
# In a URL, past Envoy's 60 KiB header limit (the front door refuses it); not in bodies,
# where it would be a prompt of thousands of tokens.
HUGE = "x" * 62_000


# Descriptors and routes


@cache
def _files() -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR_SET.read_bytes())  # validate_pb2 is imported: rules parse
    return tuple(files.file)


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in _files():
        pool.Add(file)
    return pool


@cache
def _all_rules() -> dict[str, validate_pb2.FieldRules]:
    """Every field's protovalidate rules, by the field's full name."""
    found: dict[str, validate_pb2.FieldRules] = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}" if prefix else message.name
            for f in message.field:
                if f.options.HasExtension(validate_pb2.field):
                    found[f"{name}.{f.name}"] = f.options.Extensions[validate_pb2.field]
            walk(name, message.nested_type)

    for file in _files():
        walk(file.package, file.message_type)
    return found


def _rules(f: FieldDescriptor) -> validate_pb2.FieldRules:
    return _all_rules().get(f.full_name, validate_pb2.FieldRules())


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def served_services() -> tuple[str, ...]:
    """The services the front door transcodes (and so serves over gRPC too)."""
    config = yaml.safe_load(FRONT_DOOR.read_text())
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == "front_door":
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            for http_filter in manager["http_filters"]:
                if http_filter["name"] == "envoy.filters.http.grpc_json_transcoder":
                    return tuple(http_filter["typed_config"]["services"])
    raise LookupError(f"no transcoder on the front door in {FRONT_DOOR}")


@dataclass(frozen=True)
class Variable:
    """A path template variable: `{name=models/*}` binds field `name` to `models/<seg>`."""

    field_path: str
    pattern: tuple[str, ...]  # literal segments, `*` (one segment) or `**` (any number)


@dataclass(frozen=True)
class Rule:
    verb: str  # lower case: get, post, patch, delete, put
    template: str
    body: str  # "" (none), "*" (the whole message) or a top-level field's name
    parts: tuple[str | Variable, ...]

    @property
    def mutates(self) -> bool:
        return self.verb != "get"

    def variables(self) -> tuple[Variable, ...]:
        return tuple(p for p in self.parts if isinstance(p, Variable))


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    input: Descriptor
    output: Descriptor
    server_streaming: bool
    rules: tuple[Rule, ...]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


@dataclass(frozen=True)
class Route:
    rpc: Rpc
    rule: Rule

    @property
    def id(self) -> str:
        return f"{self.rule.verb.upper()} {self.rule.template}"


def _parse_template(template: str) -> tuple[str | Variable, ...]:
    parts: list[str | Variable] = []
    for piece in re.split(r"(\{[^}]*\})", template):
        if piece.startswith("{"):
            name, _, pattern = piece[1:-1].partition("=")
            parts.append(Variable(name, tuple((pattern or "*").split("/"))))
        elif piece:
            parts.append(piece)
    return tuple(parts)


def _http_rules(options: descriptor_pb2.MethodOptions) -> tuple[Rule, ...]:
    if not options.HasExtension(annotations_pb2.http):
        return ()
    top = options.Extensions[annotations_pb2.http]
    rules = []
    for http in (top, *top.additional_bindings):
        verb = http.WhichOneof("pattern")
        template = http.custom.path if verb == "custom" else getattr(http, verb)
        verb = http.custom.kind.lower() if verb == "custom" else verb
        rules.append(Rule(verb, template, http.body, _parse_template(template)))
    return tuple(rules)


@cache
def rpcs() -> tuple[Rpc, ...]:
    """Every method of every service the front door serves."""
    served = set(served_services())
    found = []
    for file in _files():
        for service in file.service:
            full = f"{file.package}.{service.name}"
            for method in service.method if full in served else ():
                if method.client_streaming:
                    continue  # none is served; a client stream would need a driver of its own
                found.append(
                    Rpc(
                        full,
                        method.name,
                        _pool().FindMessageTypeByName(method.input_type.lstrip(".")),
                        _pool().FindMessageTypeByName(method.output_type.lstrip(".")),
                        method.server_streaming,
                        _http_rules(method.options),
                    )
                )
    missing = served - {r.service for r in found}
    assert not missing, f"the front door serves services the descriptor set lacks: {missing}"
    return tuple(found)


def routes() -> tuple[Route, ...]:
    return tuple(Route(rpc, rule) for rpc in rpcs() for rule in rpc.rules)


# Names: real ones where harmless, `fuzz-` ones, junk


@dataclass(frozen=True)
class Known:
    """Real resources of the mesh under test: read-only paths and inference calls use
    them, so fuzzing reaches past "not found"; mutating paths never do."""

    models: tuple[str, ...] = ()  # registry model ids, for reads and inference calls
    protected: frozenset[str] = frozenset()  # every model id a mutating path must never name

    def names(self, value: str) -> bool:
        return any(segment in self.protected for segment in value.split("/"))


NO_REAL = Known()


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (st.one_of keeps a single
    copy of a strategy given twice, so repeating one there weights nothing)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# Special strings are drawn by index: a strategy's repr, which Hypothesis builds for its
# reports, would otherwise hold every one of them.
texts = weighted(
    (2, st.text(max_size=24)),
    (1, st.sampled_from(range(len(SPECIAL_STRINGS))).map(SPECIAL_STRINGS.__getitem__)),
)


def _fuzz_id(value: str) -> str:
    """A value that could be a valid resource id becomes a `fuzz-` one."""
    return value if value.startswith(FUZZ_PREFIX) or not _ID.fullmatch(value) else FUZZ_PREFIX + value


ids = st.one_of(
    st.text(alphabet=string.ascii_lowercase + string.digits + "-._", max_size=12).map(lambda s: FUZZ_PREFIX + s),
    texts.map(_fuzz_id),
)


# Models nobody registered: not `fuzz-` ids, which the fuzzer may have registered (with
# no deployment: asking one for an answer is a 503, MODEL_NOT_DEPLOYED, by design).
unknown_models = ids.map(lambda s: "unknown-" + s[len(FUZZ_PREFIX) :] if s.startswith(FUZZ_PREFIX) else s)


def model_names(known: Known) -> st.SearchStrategy[str]:
    if not known.models:
        return unknown_models
    auto = ("auto", "auto:quality", "auto:cost", "auto:latency", "auto:least-busy", "auto:nonsense")
    return weighted(
        (4, st.sampled_from(known.models)),
        (2, st.sampled_from(auto)),
        (1, st.builds(lambda m, v: f"{m}@{v}", st.sampled_from(known.models), unknown_models)),
        (1, unknown_models),
    )


def segments(known: Known) -> st.SearchStrategy[str]:
    """One path segment: a real id (read-only paths only), a `fuzz-` id, junk, or huge."""
    real = [(3, st.sampled_from(known.models))] if known.models else []
    return weighted((6, ids), *real, (1, st.builds(lambda: HUGE)))


# Values of a field: valid by its rules, at their edges, anywhere in its type, or (JSON
# only) of another type


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _numeric(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# Where null, a number or an empty object could lift a cap (`"max_tokens": "300"` and
# `"parameters": {}` are valid proto3 JSON), wrong values are none of those.
wrong_caps = json_values.filter(lambda v: v is not None and not _numeric(v) and not isinstance(v, dict))

_INT_RANGES = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((F.TYPE_UINT32, F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((F.TYPE_UINT64, F.TYPE_FIXED64), (0, 2**64 - 1)),
}
_FLOAT_TYPES = {F.TYPE_FLOAT, F.TYPE_DOUBLE}


def _cap_values() -> st.SearchStrategy[int]:
    """A generation cap: tiny, or one the API must refuse."""
    return weighted((3, st.sampled_from([1, 2])), (1, st.sampled_from([0, 8193, 2**31, 2**32 - 1])))


def _carries_cap(f: FieldDescriptor) -> bool:
    return f.message_type is not None and any(sub.name in CAPS for sub in f.message_type.fields)


def _kind_rules(f: FieldDescriptor, rules: validate_pb2.FieldRules) -> Any:
    kind = rules.WhichOneof("type")
    return getattr(rules, kind) if kind else None


def _needed(f: FieldDescriptor) -> bool:
    """Always present: caps, what carries one, and what the rules require."""
    if f.name in CAPS or _carries_cap(f):
        return True
    rules = _rules(f)
    kind = _kind_rules(f, rules)
    refuses_zero = f.type == F.TYPE_ENUM and 0 in getattr(kind, "not_in", ())
    return bool(rules.required or getattr(kind, "min_len", 0) or getattr(kind, "min_items", 0) or refuses_zero)


def _bounds(kind: Any, low: float, high: float) -> tuple[float, float, bool, bool]:
    """The rules' range within [low, high], and whether each end is excluded."""
    over = under = False
    if kind is not None:
        if kind.HasField("gte") and kind.gte >= low:
            low = kind.gte
        if kind.HasField("gt") and kind.gt >= low:
            low, over = kind.gt, True
        if kind.HasField("lte") and kind.lte <= high:
            high = kind.lte
        if kind.HasField("lt") and kind.lt <= high:
            high, under = kind.lt, True
    return low, high, over, under


def _valid(f: FieldDescriptor, rules: validate_pb2.FieldRules) -> st.SearchStrategy[Any]:
    """One element of `f` that its rules accept (mostly: patterns are RE2, read as Python's)."""
    kind = _kind_rules(f, rules)
    if f.type in _INT_RANGES:
        low, high, over, under = _bounds(kind, *_INT_RANGES[f.type])
        low, high = int(low) + over, int(high) - under
        return st.one_of(st.integers(low, min(high, max(low, 0) + 100)), st.integers(low, high))
    if f.type in _FLOAT_TYPES:
        low, high, over, under = _bounds(kind, -1e6, 1e6)
        width = 32 if f.type == F.TYPE_FLOAT else 64
        return st.floats(low, high, exclude_min=over, exclude_max=under, width=width)
    if f.type == F.TYPE_STRING:
        if kind is not None and getattr(kind, "in"):
            return st.sampled_from(list(getattr(kind, "in")))
        if kind is not None and kind.pattern:
            return st.from_regex(kind.pattern, fullmatch=True)
        least = getattr(kind, "min_len", 0)
        most = kind.max_len if kind is not None and kind.HasField("max_len") else 24
        return st.text(min_size=least, max_size=max(least, min(most, 24)))
    if f.type == F.TYPE_BYTES:
        return st.binary(min_size=getattr(kind, "min_len", 0), max_size=48)
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type == F.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values if v.number not in getattr(kind, "not_in", ())]
        return st.sampled_from(numbers or [0])
    raise AssertionError(f"no scalar values for {f.full_name}")


def _edges(f: FieldDescriptor, rules: validate_pb2.FieldRules) -> list[Any]:
    """Values just outside the rules that the type can still hold."""
    kind = _kind_rules(f, rules)
    if kind is None:
        return []
    if f.type in _INT_RANGES:
        type_low, type_high = _INT_RANGES[f.type]
        low, high, over, under = _bounds(kind, type_low, type_high)
        outside = (int(low) - 1 + over, int(high) + 1 - under)
        return [v for v in outside if type_low <= v <= type_high and (low, high) != (type_low, type_high)]
    if f.type in _FLOAT_TYPES:
        low, high, _, _ = _bounds(kind, -math.inf, math.inf)
        return [v for v in (low - 0.5, low, high, high + 0.5) if math.isfinite(v)]
    if f.type == F.TYPE_STRING:
        most = kind.max_len if kind.HasField("max_len") else None
        return ["", *(["x" * (most + 1)] if most is not None and most < 70_000 else [])]
    return []


def _typed(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Any value the field's type can hold."""
    if f.type in _INT_RANGES:
        low, high = _INT_RANGES[f.type]
        edges = [low, high, 0, -1, 2**31 - 1, 2**53 + 1]
        return st.one_of(st.integers(low, high), st.sampled_from([e for e in edges if low <= e <= high]))
    if f.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if f.type == F.TYPE_DOUBLE:
        return st.floats()
    if f.type == F.TYPE_STRING:
        return texts
    if f.type == F.TYPE_BYTES:
        return st.binary(max_size=48)
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type == F.TYPE_ENUM:
        return st.integers(-(2**31), 2**31 - 1)
    raise AssertionError(f"no scalar values for {f.full_name}")


@dataclass(frozen=True)
class Shape:
    """What a generated message may contain: real ids (see `Known`), the fields filled
    elsewhere (REST: the path), fixed values (gRPC: what REST would put in the path), how
    to fill a google.api.HttpBody, and how deep to go."""

    known: Known
    skip: frozenset[str] = frozenset()
    fixed: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)
    http_body: st.SearchStrategy[bytes] = st.binary(max_size=64)
    depth: int = 3

    def nested(self, name: str) -> Shape:
        prefix = name + "."
        return Shape(
            self.known,
            frozenset(p.removeprefix(prefix) for p in self.skip if p.startswith(prefix)),
            {p.removeprefix(prefix): s for p, s in self.fixed.items() if p.startswith(prefix)},
            self.http_body,
            self.depth - 1,
        )


def _scalar(f: FieldDescriptor, shape: Shape) -> st.SearchStrategy[Any]:
    """One element of a scalar field, as a Python value the proto can hold."""
    if f.name in CAPS:
        return _cap_values()
    if f.type == F.TYPE_STRING and f.name in MODEL_FIELDS:
        return model_names(shape.known)
    if f.type == F.TYPE_STRING and (f.name in ("name", "parent") or f.name.endswith("_id")):
        return ids
    if f.type == F.TYPE_BYTES and f.containing_type.full_name == "google.api.HttpBody":
        return shape.http_body
    rules = _rules(f)
    items = rules.repeated.items if f.is_repeated and rules.HasField("repeated") else rules
    valid = _valid(f, items)
    edges = _edges(f, items)
    odd = st.one_of(_typed(f), st.sampled_from(edges)) if edges else _typed(f)
    return weighted((3, valid), (1, odd))


def _list_sizes(f: FieldDescriptor) -> tuple[int, int]:
    rules = _rules(f)
    least = rules.repeated.min_items if rules.HasField("repeated") else 0
    return least, max(least, 3)


# gRPC: messages of a type


def proto_messages(descriptor: Descriptor, shape: Shape) -> st.SearchStrategy[Message]:
    """A message with any subset of its fields set (caps and required ones always), to
    values of their types (valid by their rules or not)."""
    cls = message_class(descriptor)
    needed: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.name in shape.fixed:
            value = shape.fixed[f.name]
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            key, item = (f.message_type.fields_by_name[n] for n in ("key", "value"))
            value = st.dictionaries(_element(key, shape), _element(item, shape), max_size=2)
        elif f.is_repeated:
            value = st.lists(_element(f, shape), min_size=_list_sizes(f)[0], max_size=_list_sizes(f)[1])
        else:
            value = _element(f, shape)
        (needed if _needed(f) else optional)[f.name] = value
    return st.fixed_dictionaries(needed, optional=optional).map(lambda values: _build(cls, values))


def _element(f: FieldDescriptor, shape: Shape) -> st.SearchStrategy[Any]:
    if f.message_type is None:
        return _scalar(f, shape)
    if shape.depth <= 0:
        return st.just(message_class(f.message_type)())
    return proto_messages(f.message_type, shape.nested(f.name))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif f.is_repeated:
            target.extend(value)
        elif f.message_type is not None:
            target.SetInParent()
            target.MergeFrom(value)
        else:
            setattr(message, name, value)
    return message


# REST: proto3 JSON objects shaped like a message, with wrong values mixed in


def _timestamps() -> st.SearchStrategy[str]:
    valid = st.datetimes().map(lambda d: d.isoformat() + "Z")
    invalid = st.sampled_from(["now", "2024-02-30T00:00:00Z", "10000-01-01T00:00:00Z", "2024-01-01T00:00:00+25:00"])
    return st.one_of(valid, invalid, texts)


def _durations() -> st.SearchStrategy[str]:
    seconds = st.one_of(st.integers(-(10**12), 10**12), st.floats(-1e12, 1e12)).map(lambda s: f"{s}s")
    return st.one_of(seconds, st.sampled_from(["-1s", "315576000001s", "1h", "s", "1.0000000001s"]), texts)


def _field_names(descriptor: Descriptor, depth: int = 2) -> list[str]:
    names = []
    for f in descriptor.fields:
        names.append(f.name)
        if f.message_type is not None and depth > 0 and not f.message_type.full_name.startswith("google.protobuf."):
            names.extend(f"{f.name}.{sub}" for sub in _field_names(f.message_type, depth - 1))
    return names


def _well_known_json(f: FieldDescriptor) -> st.SearchStrategy[Any] | None:
    full = f.message_type.full_name
    if full == "google.protobuf.Timestamp":
        return _timestamps()
    if full == "google.protobuf.Duration":
        return _durations()
    if full == "google.protobuf.FieldMask":
        names = _field_names(f.containing_type)
        return st.one_of(st.lists(st.sampled_from(names), max_size=3).map(",".join), texts)
    if full == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    if full in ("google.protobuf.Value", "google.protobuf.ListValue"):
        return json_values
    if full == "google.protobuf.Any":
        return st.fixed_dictionaries({"@type": st.one_of(texts, st.just("type.googleapis.com/google.rpc.Status"))})
    if full == "google.protobuf.Empty":
        return st.just({})
    if full.startswith("google.protobuf.") and full.endswith("Value"):  # wrappers
        return _json_element(f.message_type.fields_by_name["value"], Shape(NO_REAL))
    return None


def _to_json(f: FieldDescriptor, value: Any) -> Any:
    if f.type == F.TYPE_ENUM:
        named = f.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if f.type == F.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _json_element(f: FieldDescriptor, shape: Shape) -> st.SearchStrategy[Any]:
    if f.message_type is not None:
        if f.message_type.full_name == "google.api.HttpBody":
            data = shape.http_body.map(lambda b: base64.b64encode(b).decode())
            return st.fixed_dictionaries({"content_type": texts, "data": data})
        well_known = _well_known_json(f)
        if well_known is not None:
            return well_known
        return st.just({}) if shape.depth <= 0 else json_message(f.message_type, shape.nested(f.name))
    right = _scalar(f, shape).map(lambda v: _to_json(f, v))
    if f.name in CAPS:
        return right
    if f.type in _INT_RANGES:
        low, high = _INT_RANGES[f.type]
        return weighted((2, right), (1, right.map(str)), (1, st.sampled_from([low - 1, high + 1, 1.5, "1e3"])))
    if f.type in _FLOAT_TYPES:
        return weighted((2, right), (1, st.sampled_from(["NaN", "Infinity", 1e39, -0.0, 5e-324, "1e5"])))
    if f.type == F.TYPE_ENUM:
        lowered = right.map(lambda v: v if isinstance(v, int) else v.lower())
        return weighted((2, right), (1, lowered), (1, texts))
    return right


def _json_field(f: FieldDescriptor, shape: Shape) -> st.SearchStrategy[Any]:
    wrong = wrong_caps if (f.name in CAPS or _carries_cap(f)) else json_values
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        key, item = (f.message_type.fields_by_name[n] for n in ("key", "value"))
        right = st.dictionaries(_json_element(key, shape).map(str), _json_element(item, shape), max_size=2)
    elif f.is_repeated:
        right = st.lists(_json_element(f, shape), min_size=_list_sizes(f)[0], max_size=_list_sizes(f)[1])
    else:
        right = _json_element(f, shape)
    return weighted((3, right), (1, wrong))


def json_message(descriptor: Descriptor, shape: Shape) -> st.SearchStrategy[dict[str, Any]]:
    """A proto3-JSON object: any subset of the fields (caps and required ones always),
    each with a value of its type or of another, sometimes an unknown field."""
    needed: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.name not in shape.skip:
            (needed if _needed(f) else optional)[f.name] = _json_field(f, shape)
    unknown = st.dictionaries(st.text(max_size=12), json_values, max_size=1)
    return st.builds(
        lambda fields, extra: {**extra, **fields},
        st.fixed_dictionaries(needed, optional=optional),
        weighted((2, st.just({})), (1, unknown)),
    )


# The OpenAI surface: its bodies are google.api.HttpBody, whose shape only the router's
# pydantic models know; values come from their JSON Schema


def openai_schema_for(descriptor: Descriptor) -> dict[str, Any] | None:
    """The JSON Schema of the pydantic model the router parses this request's HttpBody
    with: `CreateChatCompletionRequest` → `openai_schema.ChatCompletionRequest`."""
    from pydantic import BaseModel

    from services.router import openai_schema

    model = getattr(openai_schema, descriptor.name.removeprefix("Create"), None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    return None


def from_json_schema(schema: dict[str, Any], known: Known) -> st.SearchStrategy[Any]:
    defs = schema.get("$defs", {})

    def values(node: dict[str, Any], key: str = "") -> st.SearchStrategy[Any]:
        if key in CAPS:
            return _cap_values()
        if key in MODEL_FIELDS:
            return st.one_of(model_names(known), json_values)
        if "$ref" in node:
            return st.deferred(lambda: values(defs[node["$ref"].rsplit("/", 1)[1]]))
        if "anyOf" in node:
            return st.one_of(*(values(option, key) for option in node["anyOf"]))
        if "const" in node:
            return st.one_of(st.just(node["const"]), texts)
        if "enum" in node:
            return st.one_of(st.sampled_from(node["enum"]), texts)
        kind = node.get("type")
        if kind == "object":
            properties, needed = node.get("properties", {}), set(node.get("required", ()))
            right = st.fixed_dictionaries(
                {k: values(v, k) for k, v in properties.items() if k in needed},
                optional={k: values(v, k) for k, v in properties.items() if k not in needed},
            )
        elif kind == "array":
            right = st.lists(values(node.get("items", {})), min_size=node.get("minItems", 0), max_size=3)
        elif kind == "string":
            right = st.text(min_size=node.get("minLength", 0), max_size=24) | texts
        elif kind == "integer":
            low, high = node.get("minimum", -(2**63)), node.get("maximum", 2**63)
            right = st.one_of(st.integers(low, high), st.sampled_from([low - 1, high + 1, 2**64]))
        elif kind == "number":
            right = st.floats(node.get("minimum"), node.get("maximum")) | st.floats(allow_nan=False)
        elif kind == "boolean":
            right = st.booleans()
        elif kind == "null":
            return st.none()
        else:
            return json_values
        return weighted((3, right), (1, json_values))

    return values(schema)


def tame(body: Any) -> Any:
    """Caps every generation an OpenAI-shaped body could start (no `max_tokens`, or a
    null one, means the server's default: hundreds of tokens)."""
    if isinstance(body, dict):
        present = [key for key in CAPS if key in body]
        for key in present:
            if body[key] is None:
                body[key] = 1
        if not present:
            body["max_tokens"] = 1
    return body


def http_bodies(descriptor: Descriptor, known: Known) -> st.SearchStrategy[bytes]:
    """Raw bodies for a request that wraps a google.api.HttpBody: shaped like what the
    router parses it as, or junk."""
    schema = openai_schema_for(descriptor)
    shaped = (from_json_schema(schema, known) if schema is not None else json_values).map(
        lambda body: json.dumps(tame(body)).encode()
    )
    return weighted((3, shaped), (1, junk_bytes(shaped)))


def junk_bytes(shaped: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes that are not the JSON a route expects: random, truncated, of the wrong
    top-level type, not UTF-8, or nested deeper than parsers allow."""
    return st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        shaped.flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n])),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"\xff\xfe{}", b'{"a":"\xc3\x28"}', b"[" * 10_000, b"{" * 5000, b"\x00", b'{"a":1}{"a":2}']),
    )


# REST requests


@dataclass
class HttpRequest:
    method: str
    path: str  # with the query string, encoded
    headers: dict[str, str]
    content: bytes | None

    def __repr__(self) -> str:
        headers = "".join(f" -H '{k}: {v}'" for k, v in self.headers.items())
        body = "" if self.content is None else f" --data-binary {self.content[:2000]!r}"
        return f"curl -X {self.method} 'BASE{self.path[:3000]}'{headers}{body}"


VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CONTENT_TYPES = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/xml",
    "",
    "application/json; charset=utf-16",
)


def variable_values(variable: Variable, known: Known) -> st.SearchStrategy[tuple[str, str]]:
    """(field value, URL text) for a path variable: matching its pattern (segments
    percent-encoded, or with `/` and `%` left as they are) or anything at all."""

    def matching(fills: list[list[str]], safe: str) -> tuple[str, str]:
        value: list[str] = []
        url: list[str] = []
        pieces = iter(fills)
        for literal in variable.pattern:
            if literal in ("*", "**"):
                drawn = next(pieces)
                value.extend(drawn)
                url.extend(quote(p, safe=safe) for p in drawn)
            else:
                value.append(literal)
                url.append(literal)
        return "/".join(value), "/".join(url)

    fills = [
        st.lists(segments(known), min_size=1, max_size=3) if p == "**" else segments(known).map(lambda s: [s])
        for p in variable.pattern
        if p in ("*", "**")
    ]
    safe = st.sampled_from(["", "", "/%"])
    shaped = st.builds(matching, st.tuples(*fills).map(list), safe)
    junk = st.builds(lambda text, s: (text, quote(text, safe=s)), texts, safe)
    return weighted((3, shaped), (1, junk))


def _query_value(f: FieldDescriptor, shape: Shape) -> st.SearchStrategy[str]:
    right = _json_element(f, shape).map(lambda v: v if isinstance(v, str) else json.dumps(v))
    return weighted((2, right), (1, texts))


def _query_params(route: Route, shape: Shape) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Query parameters: the request's fields that are neither in the path nor in the
    body (a message's scalar fields as `field.sub`), and sometimes an unknown one."""
    rule = route.rule
    if rule.body == "*":
        return st.just([])
    in_path = {v.field_path.split(".")[0] for v in rule.variables()}
    leaves: list[tuple[str, FieldDescriptor]] = []
    for f in route.rpc.input.fields:
        if f.name == rule.body or f.name in in_path:
            continue
        if f.message_type is None or _well_known_json(f) is not None:
            leaves.append((f.name, f))
        elif not f.message_type.GetOptions().map_entry:
            leaves.extend((f"{f.name}.{sub.name}", sub) for sub in f.message_type.fields if sub.message_type is None)
    groups = [
        st.lists(_query_value(leaf, shape), max_size=2 if leaf.is_repeated else 1).map(
            lambda values, name=name: [(name, v) for v in values]
        )
        for name, leaf in leaves
    ]
    groups.append(st.lists(st.tuples(st.text(min_size=1, max_size=10), texts), max_size=1))
    return st.tuples(*groups).map(lambda drawn: [pair for group in drawn for pair in group])


@st.composite
def rest_requests(draw: st.DrawFn, route: Route, known: Known) -> HttpRequest:
    """One HTTP request for a route: shaped like its method's request message (mostly),
    or with a junk body, the wrong content type or the wrong verb."""
    rule = route.rule
    variant = draw(st.sampled_from(["shaped"] * 5 + ["junk", "content-type", "verb"]))
    # A mutating route, and any route asked with another verb (that may reach a mutating
    # method on the same path), never names a real resource in its path.
    path_known = NO_REAL if (rule.mutates or variant == "verb") else known
    in_path: set[str] = set()
    url = ""
    for part in rule.parts:
        if isinstance(part, Variable):
            value, text = draw(variable_values(part, path_known))
            assume(path_known is known or not known.names(value))
            in_path.add(part.field_path)
            url += text
        else:
            url += part
    shape = Shape(known, skip=frozenset(in_path))
    params = draw(_query_params(route, shape))
    content = None
    if rule.body:
        target = route.rpc.input
        if rule.body != "*":
            target = target.fields_by_name[rule.body].message_type
            shape = shape.nested(rule.body)
        if target.full_name == "google.api.HttpBody":
            shaped = http_bodies(route.rpc.input, known)
        else:
            shaped = json_message(target, shape).map(lambda body: json.dumps(body).encode())
        content = draw(junk_bytes(shaped) if variant == "junk" else shaped)
    headers = {"content-type": "application/json"} if content is not None else {}
    method = rule.verb.upper()
    if variant == "content-type":
        headers = {"content-type": draw(st.sampled_from(CONTENT_TYPES))}
    elif variant == "verb":
        method = draw(st.sampled_from([v for v in VERBS if v != method]))
    if params:
        url += "?" + urlencode(params)
    assume(len(url) < MAX_URL)
    return HttpRequest(method, url, headers, content)


# gRPC requests


@dataclass
class GrpcRequest:
    rpc: Rpc
    payload: bytes
    message: Message | None  # None: raw bytes, maybe undecodable

    def __repr__(self) -> str:
        shown = "raw bytes" if self.message is None else text_format.MessageToString(self.message, as_one_line=True)
        return f"{self.rpc.path} payload={self.payload[:2000]!r} ({shown[:2000]})"


def _path_bound(rpc: Rpc, known: Known) -> dict[str, st.SearchStrategy[str]]:
    """Values for the fields an HTTP rule binds to its path, as REST would send them;
    where any rule binding the field mutates, never a real resource."""
    bound: dict[str, st.SearchStrategy[str]] = {}
    for rule in sorted(rpc.rules, key=lambda r: r.mutates):  # a mutating binding wins
        for variable in rule.variables():
            real = NO_REAL if rule.mutates else known
            values = variable_values(variable, real).map(lambda pair: pair[0])
            bound[variable.field_path] = values.filter(lambda v: not known.names(v)) if real is NO_REAL else values
    return bound


def _invalid_utf8(descriptor: Descriptor) -> bytes:
    """A well-formed message whose first string field holds bytes that are not UTF-8."""
    strings = [f for f in descriptor.fields if f.type == F.TYPE_STRING]
    return bytes([(strings[0].number if strings else 1) << 3 | 2, 2]) + b"\xc3\x28"


def grpc_requests(rpc: Rpc, known: Known) -> st.SearchStrategy[GrpcRequest]:
    """A message of the method's request type (mostly), or raw bytes: random, truncated,
    with trailing garbage, or with a string that is not UTF-8. Raw payloads start from
    messages that name no real model, so junk cannot make a real, uncapped generation."""
    wraps_body = any(f.message_type and f.message_type.full_name == "google.api.HttpBody" for f in rpc.input.fields)
    http_body = http_bodies(rpc.input, known) if wraps_body else st.binary(max_size=64)
    messages = proto_messages(rpc.input, Shape(known, fixed=_path_bound(rpc, known), http_body=http_body))
    safe = proto_messages(rpc.input, Shape(NO_REAL, fixed=_path_bound(rpc, NO_REAL))).map(
        lambda m: m.SerializeToString()
    )
    raw = st.one_of(
        st.binary(min_size=1, max_size=64),
        st.builds(bytes.__add__, safe, st.binary(min_size=1, max_size=8)),
        safe.filter(len).flatmap(lambda b: st.integers(0, len(b) - 1).map(lambda n: b[:n])),
        st.just(_invalid_utf8(rpc.input)),
    )
    shaped = messages.map(lambda m: GrpcRequest(rpc, m.SerializeToString(), m))
    return weighted((3, shaped), (1, raw.map(lambda b: GrpcRequest(rpc, b, None))))
