"""Filtering (AIP-160) and ordering (AIP-132) for the registry's List RPCs.

Registry resources are evaluated in Python, over the plain dicts that
``google.protobuf.json_format.MessageToDict(msg, preserving_proto_field_name=True)`` produces,
rather than translated to SQL: the same filter then means the same thing on SQLite and PostgreSQL,
whatever JSON operators each dialect has, and registry Lists are small enough to scan.

Supported filter subset (https://google.aip.dev/160):

* comparisons ``field = value``, ``!=``, ``<``, ``<=``, ``>``, ``>=``;
* has: ``field:value`` (a repeated field has an element equal to value; a map field has the key
  value; a scalar field equals value) and ``field:*`` (present and non-empty);
* dotted paths through nested messages and maps (``labels.env``, ``pricing.input_per_1k_tokens``);
* values: ``"double"`` or ``'single'`` quoted strings with backslash escapes, integers, floats, and
  bare words, which are strings (``provider = local``, ``enabled = true``); ``AND``, ``OR`` and
  ``NOT`` are reserved words;
* ``*`` in a string value of ``=`` or ``!=`` is a glob wildcard (``display_name = "Gemma*"``);
* ``AND``, ``OR``, ``NOT``, ``-`` (negation), parentheses and juxtaposition (an implicit ``AND``),
  with AIP-160 precedence: ``OR`` binds tighter than ``AND`` (``a AND b OR c`` is ``a AND (b OR c)``).

Values compare by what the dict holds, so that MessageToDict's encoding does not leak into filters:
a numeric literal against a number, or a number held as a string (int64/uint64), compares
numerically; RFC 3339 timestamps compare chronologically; everything else compares as strings.
A field that is absent (MessageToDict omits fields at their default value) fails ``=`` and the
ordering comparisons and passes ``!=``; so ``enabled = false`` or ``count = 0`` match only dicts
made with ``always_print_fields_with_no_presence=True``.

Not supported: functions (``fn(x)``), bare values as global text search (a term must be a
comparison or has), traversal into repeated messages (``endpoints.region``), durations as
``"1s"`` literals, and unquoted timestamps (quote them: ``create_time > "2026-01-01T00:00:00Z"``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

__all__ = ["FilterError", "compile_filter", "compile_order_by"]

Predicate = Callable[[dict], bool]

_GRAMMAR = r"""
// AIP-160: expression = sequence {AND sequence}; sequence = factor {factor}; factor = term {OR term}.
?filter: sequence (_AND sequence)*
?sequence: factor+
?factor: term (_OR term)*
?term: _NOT term                            -> negate
     | "-" term                             -> negate
     | "(" filter ")"
     | path COMPARATOR value                -> compare
     | path ":" (value | STAR)              -> has
?value: STRING | NUMBER | path
path: WORD ("." WORD)*

// AIP-132: order_by = key {"," key}; key = path ["asc" | "desc"].
order_by: order_key ("," order_key)*
order_key: path (ASC | DESC)?

_AND: "AND"
_OR: "OR"
_NOT: "NOT"
ASC: "asc"
DESC: "desc"
COMPARATOR: "<=" | ">=" | "!=" | "<" | ">" | "="
STAR: "*"
STRING: /"(?:[^"\\]|\\.)*"/ | /'(?:[^'\\]|\\.)*'/
NUMBER: /-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?/
WORD: /(?!(?:AND|OR|NOT)(?![A-Za-z0-9_-]))[A-Za-z_][A-Za-z0-9_-]*/  // AND, OR and NOT are reserved

%import common.WS
%ignore WS
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", start=["filter", "order_by"])

# Names for the grammar's terminals in error messages.
_EXPECTED_NAMES = {
    "WORD": "a name",
    "COMPARATOR": "a comparison operator",
    "COLON": '":"',
    "STRING": "a string",
    "NUMBER": "a number",
    "STAR": '"*"',
    "LPAR": '"("',
    "RPAR": '")"',
    "MINUS": '"-"',
    "DOT": '"."',
    "COMMA": '","',
    "ASC": '"asc"',
    "DESC": '"desc"',
    "_AND": "AND",
    "_OR": "OR",
    "_NOT": "NOT",
}


class FilterError(ValueError):
    """An invalid filter or order_by: bad syntax or a field that may not be used (INVALID_ARGUMENT).

    ``column`` is the 1-based position in the text where the problem is.
    """

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.column = column


def compile_filter(text: str, fields: set[str] | None = None) -> Predicate:
    """Compile an AIP-160 ``filter`` into a predicate over MessageToDict dicts.

    ``fields`` holds the top-level field names a filter may use (the first segment of a path);
    None allows any. Empty or whitespace-only text accepts everything. Raises FilterError.
    """
    if not text.strip():
        return lambda resource: True
    tree = _parse(text, "filter")
    try:
        return _FilterBuilder(fields).transform(tree)
    except VisitError as e:
        raise e.orig_exc from None


def compile_order_by(text: str, fields: set[str] | None = None) -> Callable[[list[dict]], list[dict]]:
    """Compile an AIP-132 ``order_by`` (``"field [desc], other.field"``) into a sorting function.

    The keys apply in sequence as one stable multi-key sort. A missing value sorts first ascending
    (last descending); numbers (int64 strings included) sort numerically, RFC 3339 timestamps
    chronologically, other strings lexicographically. ``fields`` is the allow-list of top-level
    field names, as for compile_filter. Empty text gives a function that returns the list's
    items in their order. Raises FilterError.
    """
    if not text.strip():
        return list
    keys: list[tuple[tuple[str, ...], bool]] = []
    for order_key in _parse(text, "order_by").children:
        path, *direction = order_key.children
        segments = _path_segments(path, fields, "order_by")
        keys.append((segments, bool(direction) and direction[0] == "desc"))

    def sort(resources: list[dict]) -> list[dict]:
        result = list(resources)
        # Python's sort is stable (with reverse=True too), so sorting by the last key first gives the multi-key order.
        for segments, descending in reversed(keys):
            result.sort(key=lambda resource: _sort_key(_resolve(resource, segments)), reverse=descending)
        return result

    return sort


# --- parsing -----------------------------------------------------------------------------------


def _parse(text: str, start: str):
    """Parse ``text`` from the grammar's ``start`` rule ("filter" or "order_by"), raising FilterError."""
    what = start
    try:
        return _PARSER.parse(text, start=start)
    except UnexpectedCharacters as e:
        column = e.pos_in_stream + 1
        found = re.match(r"[A-Za-z0-9_-]+|.", text[e.pos_in_stream :], flags=re.DOTALL)[0]  # the whole word, if one
        raise FilterError(f"invalid {what}: unexpected {found!r} at column {column}", column) from None
    except UnexpectedToken as e:
        if e.token.type == "$END":
            column = len(text.rstrip()) + 1
            found = "end of text"
        else:
            column = e.token.start_pos + 1
            found = repr(str(e.token))
        expected = sorted({_EXPECTED_NAMES.get(name, name) for name in e.expected if name != "$END"})
        hint = f"; expected {', '.join(expected)}" if expected else ""
        raise FilterError(f"invalid {what}: unexpected {found} at column {column}{hint}", column) from None
    except UnexpectedInput as e:  # any other lark error, e.g. an unexpected end of input
        column = max(e.pos_in_stream or 0, 0) + 1
        raise FilterError(f"invalid {what} at column {column}", column) from None


def _path_segments(path, fields: set[str] | None, what: str) -> tuple[str, ...]:
    """The segments of a parsed path, checked against the allow-list of top-level fields."""
    tokens: list[Token] = path.children
    if fields is not None and tokens[0] not in fields:
        column = tokens[0].start_pos + 1
        allowed = ", ".join(sorted(fields)) or "none"
        raise FilterError(
            f"invalid {what}: field {str(tokens[0])!r} at column {column} cannot be used here (allowed: {allowed})",
            column,
        )
    return tuple(str(token) for token in tokens)


@dataclass(frozen=True)
class _Literal:
    """A value in a filter: ``text`` as written (unquoted), and whether it was a numeric literal."""

    text: str
    numeric: bool = False


def _literal(value) -> _Literal:
    if isinstance(value, Token) and value.type == "NUMBER":
        return _Literal(str(value), numeric=True)
    if isinstance(value, Token) and value.type == "STRING":
        return _Literal(_unescape(value[1:-1]))
    return _Literal(".".join(value.children))  # a bare word (or dotted words): a string


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), text, flags=re.DOTALL)


@v_args(inline=True)
class _FilterBuilder(Transformer):
    """Turns the parse tree into nested predicates."""

    def __init__(self, fields: set[str] | None) -> None:
        super().__init__()
        self.fields = fields

    def all_of(self, *predicates: Predicate) -> Predicate:
        return lambda resource: all(predicate(resource) for predicate in predicates)

    def any_of(self, *predicates: Predicate) -> Predicate:
        return lambda resource: any(predicate(resource) for predicate in predicates)

    filter = sequence = all_of  # AND, and juxtaposition (the grammar inlines a single child)
    factor = any_of  # OR

    def negate(self, predicate: Predicate) -> Predicate:
        return lambda resource: not predicate(resource)

    def compare(self, path, comparator: Token, value) -> Predicate:
        segments = _path_segments(path, self.fields, "filter")
        literal, op = _literal(value), str(comparator)
        return lambda resource: _compare(_resolve(resource, segments), op, literal)

    def has(self, path, value) -> Predicate:
        segments = _path_segments(path, self.fields, "filter")
        if isinstance(value, Token) and value.type == "STAR":
            return lambda resource: _present(_resolve(resource, segments))
        literal = _literal(value)
        return lambda resource: _has(_resolve(resource, segments), literal)


# --- evaluation --------------------------------------------------------------------------------

_MISSING = object()

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt ].*)?")


def _resolve(resource: Any, segments: tuple[str, ...]) -> Any:
    for segment in segments:
        if not isinstance(resource, dict) or segment not in resource:
            return _MISSING
        resource = resource[segment]
    return resource


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value):
            return float(value)
    return None


def _as_timestamp(value: str) -> datetime | None:
    if not _TIMESTAMP.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _glob(pattern: str, value: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), value, flags=re.DOTALL) is not None


def _compare(actual: Any, op: str, literal: _Literal) -> bool:
    if actual is _MISSING or isinstance(actual, list | dict):
        return op == "!="  # absent or not a scalar: equal to nothing, unordered
    compare = _OPERATORS[op]
    if isinstance(actual, bool):
        actual = "true" if actual else "false"
    if literal.numeric or not isinstance(actual, str):
        # A numeric literal, or a number field (int32/double) against a quoted or bare value.
        left, right = _as_number(actual), _as_number(literal.text)
        if left is not None and right is not None:
            return compare(left, right)
        return compare(str(actual), literal.text)
    if op in ("=", "!=") and "*" in literal.text:
        return _glob(literal.text, actual) == (op == "=")
    left_time, right_time = _as_timestamp(actual), _as_timestamp(literal.text)
    if left_time is not None and right_time is not None:
        return compare(left_time, right_time)
    return compare(actual, literal.text)


def _has(actual: Any, literal: _Literal) -> bool:
    if isinstance(actual, list):
        return any(_compare(element, "=", literal) for element in actual)
    if isinstance(actual, dict):
        return literal.text in actual
    return _compare(actual, "=", literal)


def _present(actual: Any) -> bool:
    return actual is not _MISSING and actual not in ("", [], {}, None)


def _sort_key(value: Any) -> tuple:
    """A key that orders any values: missing, then numbers, timestamps, strings, and the rest."""
    if value is _MISSING or value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, int(value))
    number = _as_number(value)
    if number is not None:
        return (1, number)
    if isinstance(value, str):
        timestamp = _as_timestamp(value)
        return (2, timestamp) if timestamp is not None else (3, value)
    return (4, repr(value))
