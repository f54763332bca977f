"""The checks protovalidate leaves out on google.protobuf.Timestamp and Duration values:
the protobuf spec bounds both, and converting one outside its bounds (`ToDatetime`,
`ToTimedelta`, `ToNanoseconds`) raises ValueError or OverflowError in whichever servicer
does it first. The validation interceptor refuses such requests before any servicer runs.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_DURATION_SECONDS = 315_576_000_000  # about 10,000 years
MAX_NANOS = 999_999_999


@functools.cache
def _holds_time(descriptor: Descriptor) -> bool:
    """Whether a message of this type can contain a Timestamp or Duration at any depth."""
    seen = {descriptor.full_name}
    pending = [descriptor]
    while pending:
        for field in pending.pop().fields:
            kind = field.message_type
            if kind is None:
                continue
            if kind.full_name in (TIMESTAMP, DURATION):
                return True
            if kind.full_name not in seen:
                seen.add(kind.full_name)
                pending.append(kind)
    return False


def _timestamp_problem(stamp: Message) -> str:
    if MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= stamp.nanos <= MAX_NANOS:
        return ""
    return "must be a timestamp from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z"


def _duration_problem(duration: Message) -> str:
    seconds, nanos = duration.seconds, duration.nanos
    if abs(seconds) <= MAX_DURATION_SECONDS and abs(nanos) <= MAX_NANOS and seconds * nanos >= 0:
        return ""
    return f"must be a duration of at most {MAX_DURATION_SECONDS} seconds either way, its nanos of the same sign"


def invalid_times(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, what is wrong) for every Timestamp and Duration in `message`,
    nested, repeated and map values included, that is outside the spec's range."""
    if not _holds_time(message.DESCRIPTOR):
        return []
    problems: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None:
            continue
        if kind.GetOptions().map_entry:
            kind = kind.fields_by_name["value"].message_type
            if kind is None:
                continue
            items = list(value.values())
        else:
            items = list(value) if field.is_repeated else [value]
        path = prefix + field.name
        for item in items:
            if kind.full_name == TIMESTAMP:
                problem = _timestamp_problem(item)
            elif kind.full_name == DURATION:
                problem = _duration_problem(item)
            else:
                problems.extend(invalid_times(item, path + "."))
                continue
            if problem:
                problems.append((path, problem))
    return problems
