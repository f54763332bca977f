"""OpenAI's Batch API shapes, transport-free: the checks of a create request and of each
line of its input file, and the file, batch and result objects as OpenAI writes them
(https://platform.openai.com/docs/api-reference/batch)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from services.runtime.errors import InvalidArgument

COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_METADATA = 16  # keys; OpenAI's metadata limits
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
BATCH_PURPOSE = "batch"
# Purposes a caller may upload with (the rest belong to OpenAI features the mesh lacks);
# batch_output is what the mesh writes.
UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
# A batch's life (OpenAI's statuses); the runner takes the first four.
VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING = "validating", "in_progress", "finalizing", "cancelling"
FAILED, COMPLETED, EXPIRED, CANCELLED = "failed", "completed", "expired", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def invalid(message: str, param: str | None = None, reason: str = "INVALID_REQUEST_FIELDS") -> InvalidArgument:
    return InvalidArgument(message, reason=reason, **({"param": param} if param else {}))


@dataclass(frozen=True)
class CreateBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


def parse_create(body: bytes, endpoints: Collection[str]) -> CreateBatch:
    """A create request's JSON, checked; a 400 naming the field otherwise (an unknown
    field too: nothing a caller asks for is dropped)."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        raise invalid("the request body is not JSON") from None
    if not isinstance(request, dict):
        raise invalid("the request body must be a JSON object")
    for field in request.keys() - CREATE_FIELDS:
        raise InvalidArgument(
            f"Unrecognized request argument supplied: {field}", reason="UNKNOWN_PARAMETER", param=field
        )
    for field in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(request.get(field), str) or not request[field]:
            raise invalid(f"'{field}' is required (a string)", field)
    if request["endpoint"] not in endpoints:
        supported = ", ".join(sorted(endpoints))
        raise invalid(f"endpoint {request['endpoint']!r} is not supported; supported: {supported}", "endpoint")
    if request["completion_window"] != COMPLETION_WINDOW:
        raise invalid(f"completion_window must be {COMPLETION_WINDOW!r}", "completion_window")
    metadata = request.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise invalid(
            f"metadata is at most {MAX_METADATA} string keys of up to {MAX_METADATA_KEY} characters "
            f"with string values of up to {MAX_METADATA_VALUE}",
            "metadata",
        )
    return CreateBatch(request["input_file_id"], request["endpoint"], request["completion_window"], metadata)


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= MAX_METADATA
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_METADATA_KEY and len(v) <= MAX_METADATA_VALUE
            for k, v in metadata.items()
        )
    )


@dataclass(frozen=True)
class Line:
    """One request of a batch's input file (`line` counts from 1, as OpenAI's errors do);
    the store hands pending ones back to the runner as the same type."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


def parse_input(content: bytes, endpoint: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The requests of an input file, and OpenAI's `errors.data` entries for the lines that
    are not valid requests to `endpoint` (any error fails the whole batch, as OpenAI's
    validation does, before a request is sent)."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    try:
        text = content.decode()
    except UnicodeDecodeError:
        return [], [{"code": "invalid_json_line", "message": "the file is not UTF-8 text", "param": None, "line": None}]
    rows = [(n, row) for n, row in enumerate(text.splitlines(), start=1) if row.strip()]
    if not rows:
        return [], [{"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}]
    if len(rows) > MAX_LINES:
        message = f"the input file has {len(rows)} requests; a batch takes at most {MAX_LINES}"
        return [], [{"code": "too_many_requests", "message": message, "param": None, "line": None}]
    for number, row in rows:
        try:
            request = json.loads(row)
        except ValueError:
            error(number, "invalid_json_line", "this line is not valid JSON")
            continue
        if not isinstance(request, dict):
            error(number, "invalid_json_line", "each line must be a JSON object")
            continue
        unknown = sorted(request.keys() - {"custom_id", "method", "url", "body"})
        custom_id, body = request.get("custom_id"), request.get("body")
        if unknown:
            error(number, "invalid_request", f"unknown field {unknown[0]!r} on the line", unknown[0])
        elif not isinstance(custom_id, str) or not custom_id:
            error(number, "missing_required_parameter", "custom_id is required (a string)", "custom_id")
        elif custom_id in seen:
            error(number, "duplicate_custom_id", f"custom_id {custom_id!r} is used twice", "custom_id")
        elif request.get("method") != "POST":
            error(number, "invalid_method", "method must be 'POST'", "method")
        elif request.get("url") != endpoint:
            error(number, "mismatched_endpoint", f"url must be the batch's endpoint, {endpoint!r}", "url")
        elif not isinstance(body, dict):
            error(number, "invalid_request", "body must be a JSON object", "body")
        elif body.get("stream"):
            error(number, "invalid_request", "a batch request cannot stream", "body.stream")
        else:
            seen.add(custom_id)
            lines.append(Line(number, custom_id, endpoint, body))
    return lines, errors


def file_object(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": None,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


def new_batch(batch_id: str, request: CreateBatch, now: int, errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A new batch's object: validating, or failed already when its input had errors."""
    failed = bool(errors)
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": request.endpoint,
        "errors": {"object": "list", "data": errors} if failed else None,
        "input_file_id": request.input_file_id,
        "completion_window": request.completion_window,
        "status": FAILED if failed else VALIDATING,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + WINDOW_SECONDS,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": now if failed else None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": request.metadata,
    }


# The timestamp each status sets on entry.
STATUS_TIME = {
    IN_PROGRESS: "in_progress_at",
    FINALIZING: "finalizing_at",
    COMPLETED: "completed_at",
    FAILED: "failed_at",
    EXPIRED: "expired_at",
    CANCELLING: "cancelling_at",
    CANCELLED: "cancelled_at",
}


def result_line(custom_id: str, request_id: str, status_code: int, body: Any) -> dict[str, Any]:
    """A line of the output (2xx) or error file: the answer as an HTTP client saw it."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def unanswered_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A line of the error file for a request never answered (the batch expired)."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
