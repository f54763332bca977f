"""Errors in OpenAI's shape, for the OpenAI-compatible paths (`/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings`, `/v1/models[/{id}]`): `{"error": {"message", "type",
"param", "code"}}` with the HTTP status the official SDKs turn into their exception
classes. Transport-free: the router's OpenAI servicer, the gateway's authorization and
rate limit services all build their bodies here; the native REST API keeps
google.rpc.Status JSON.

What the SDKs read: openai-python (`_base_client._make_status_error_from_response`) picks
the exception class by HTTP status and shows `error.message` in the exception's text;
its `.body` is the object under "error". openai-node (`APIError.generate`/`makeMessage`)
shows `"<status> <error.message>"`. Both retry 408, 409, 429 and every 5xx, honouring
Retry-After.

The mapping:
  - HTTP status: the gRPC code's, as Envoy's transcoder maps it (google/rpc/code.proto),
    except that a model with no deployment at all (MODEL_NOT_DEPLOYED with
    `deployments` "0": only an operator can fix that) is a 404, not a 503 the SDKs
    would retry. A model whose deployments' backends are down or restarting stays 503.
  - `code`: the ErrorInfo reason, lower-cased, or OpenAI's own code where ours means
    the same (every UNAUTHENTICATED error is `invalid_api_key`); without an ErrorInfo,
    the gRPC code's name, lower-cased.
  - `param`: the ErrorInfo's `param`, else the first of its `fields`, else the request
    field a reason is always about (MAX_TOKENS_TOO_LARGE: `max_tokens`), else null.
  - `type`: by HTTP status (OpenAI's types).
  - `details`: the ErrorInfo itself (reason, domain, metadata), an extra key the SDKs
    ignore and a program can read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.rpc import code_pb2, error_details_pb2, status_pb2

# The router's OpenAI servicer answers an error that happens before the first byte of a
# response as an OK call: one google.api.HttpBody (application/json, the body from
# `openai_error`) with these in its initial metadata. Envoy moves this header into the
# response's :status on the OpenAI routes (envoy/openai_status.lua) and drops it.
HTTP_STATUS_HEADER = "x-infermesh-http-status"
RETRY_AFTER_HEADER = "retry-after"
# Behind Envoy's transcoder an OpenAI call arrives as this service's gRPC method, with
# the REST path it came in on in this header; a gRPC client calling the service itself
# sends none, and keeps gRPC errors.
OPENAI_SERVICE_PREFIX = "/infermesh.openai.v1.OpenAIService/"
# OpenAI's Files and Batch APIs, served by the jobs service (services/jobs/).
BATCH_SERVICE_PREFIX = "/infermesh.jobs.v1.BatchService/"
TRANSCODED_PATH_HEADER = "x-envoy-original-path"
# Envoy reshapes its own local replies on the OpenAI paths (the front door's
# local_reply_config); a refusal the gateway's authorization service shaped already says
# so under this key of its dynamic metadata, and is left alone.
SHAPED_METADATA_KEY = "openai_error"

# google/rpc/code.proto's HTTP mapping, as Envoy's transcoder applies it.
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

# Our reasons that OpenAI has a code for, with the same meaning.
OPENAI_CODES = {
    "RATE_LIMIT_EXCEEDED": "rate_limit_exceeded",
    "MODEL_NOT_FOUND": "model_not_found",
    "CONTEXT_LENGTH_EXCEEDED": "context_length_exceeded",
}
INVALID_API_KEY = "invalid_api_key"
MODEL_NOT_DEPLOYED = "MODEL_NOT_DEPLOYED"

# The request field an error with this reason is about, when its metadata does not say.
REASON_PARAMS = {
    "MAX_TOKENS_TOO_LARGE": "max_tokens",
    "UNSUPPORTED_DIMENSIONS": "dimensions",
    "UNKNOWN_STRATEGY": "model",
    "MODEL_NOT_FOUND": "model",
    "VERSION_NOT_FOUND": "model",
    "MODEL_NOT_ALLOWED": "model",
    MODEL_NOT_DEPLOYED: "model",
}

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def is_openai_rest_call(path: str, headers: Mapping[str, str]) -> bool:
    """Whether a request (its gRPC path and lower-cased headers, as Envoy's ext_authz
    sends them) came in on an OpenAI-compatible REST path."""
    return path.startswith((OPENAI_SERVICE_PREFIX, BATCH_SERVICE_PREFIX)) and TRANSCODED_PATH_HEADER in headers


def error_type(http_status: int) -> str:
    """OpenAI's error type for an HTTP status: 401 authentication_error, 403
    permission_error, 429 rate_limit_error, other 4xx invalid_request_error (400, 404,
    409, 413, 415, 422...), 5xx server_error."""
    if http_status in _TYPES:
        return _TYPES[http_status]
    return "server_error" if http_status >= 500 else "invalid_request_error"


def openai_error_body(
    http_status: int,
    message: str,
    code: str | None,
    param: str | None = None,
    type: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, the type from the status
    unless given; `details` (the ErrorInfo as JSON) is added under "error" when given."""
    error: dict[str, Any] = {
        "message": message,
        "type": type or error_type(http_status),
        "param": param,
        "code": code,
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def retry_after_seconds(status: status_pb2.Status) -> int | None:
    """Whole seconds to wait (at least 1) when the status carries a RetryInfo, for the
    response's Retry-After; None otherwise."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(1, math.ceil(info.retry_delay.ToNanoseconds() / 1e9))
    return None


def http_status(status: status_pb2.Status, info: error_details_pb2.ErrorInfo | None = None) -> int:
    """The HTTP status for a google.rpc.Status on the OpenAI surface."""
    info = info if info is not None else error_info(status)
    if (
        status.code == code_pb2.UNAVAILABLE
        and info is not None
        and info.reason == MODEL_NOT_DEPLOYED
        and info.metadata.get("deployments") == "0"
    ):
        return 404  # permanent: no retry will find a deployment an operator has not made
    return HTTP_STATUS.get(status.code, 500)


def _code_name(code: int) -> str:
    return code_pb2.Code.Name(code).lower() if code in HTTP_STATUS else "unknown"


def _code(status: status_pb2.Status, info: error_details_pb2.ErrorInfo | None) -> str:
    if status.code == code_pb2.UNAUTHENTICATED:
        return INVALID_API_KEY
    if info is None or not info.reason:
        return _code_name(status.code)
    return OPENAI_CODES.get(info.reason, info.reason.lower())


def _param(info: error_details_pb2.ErrorInfo | None) -> str | None:
    if info is None:
        return None
    if info.metadata.get("param"):
        return info.metadata["param"]
    if info.metadata.get("fields"):
        return info.metadata["fields"].split(",")[0]
    return REASON_PARAMS.get(info.reason)


def openai_error(status: status_pb2.Status) -> tuple[int, dict[str, Any]]:
    """A google.rpc.Status as the OpenAI surface answers it: (HTTP status, body)."""
    info = error_info(status)
    code = http_status(status, info)
    details = None
    if info is not None:
        details = {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
    message = status.message or _code_name(status.code).replace("_", " ")
    return code, openai_error_body(code, message, _code(status, info), _param(info), details=details)
