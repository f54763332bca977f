"""The front door's OpenAI-compatible surface in Envoy: the routes that mark its REST paths
and the local replies that answer Envoy's own errors there in OpenAI's shape."""

from __future__ import annotations

import copy
from typing import Any

from services.runtime.openai_errors import (
    BATCH_SERVICE_PREFIX,
    OPENAI_SERVICE_PREFIX,
    SHAPED_METADATA_KEY,
    TRANSCODED_PATH_HEADER,
    error_type,
)

# The OpenAI-compatible REST paths (the OpenAI SDK's, services/router/openai_servicer.py):
# `/v1/models` and `/v1/models/{id}` (lifecycle verbs are under /v1/backend/models). Errors there are
# in OpenAI's shape (DESIGN decision 9), whoever answers: the router's OpenAI servicer,
# the jobs service (files and batches), the gateway's authorization and rate limit
# services, or Envoy itself.
# Two regexes: one of them all is past Envoy's RE2 program size limit.
OPENAI_REST_PATHS = (
    r"/v1/(chat/completions|completions|embeddings|audio/(transcriptions|speech)|models(/[^:?]*)?)",
    r"/v1/(files|batches)(/[^:?]*)?",
)
# OpenAI's other endpoints, which this mesh does not serve: a client calling one (the SDK's
# `responses.create`, `images.generate`...) gets OpenAI's own "Invalid URL" 404, in its
# shape. Matched by prefix (one regex of them all is past Envoy's RE2 program size limit).
OPENAI_UNSERVED_PREFIXES = tuple(
    f"/v1/{resource}"
    for resource in (
        "responses", "audio/translations", "images/", "uploads", "fine_tuning/", "moderations",
        "assistants", "threads", "vector_stores", "realtime", "conversations", "containers", "evals", "videos",
    )
)  # fmt: skip
OPENAI_ROUTE, OPENAI_REST_ROUTE, BATCH_ROUTE = "openai", "openai-rest", "openai-batch"
_OPENAI_STATUS = {
    "envoy.filters.http.lua": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
        "name": "openai_status",
    }
}


def openai_routes(router: dict[str, Any], jobs: str) -> list[dict[str, Any]]:
    """The OpenAI surface's two routes, each like the router's catch-all `router` route
    plus the Lua filter that sets the status of the servicer's error answers
    (envoy/openai_status.lua). The filter chain is made for the route a request first
    matches, its REST path: that route turns the filter on. Once transcoded, the request
    is matched again, on its gRPC method and the REST path the transcoder kept in
    x-envoy-original-path: that route runs the script on the response, and carries the
    rate limits, which say they are for the OpenAI surface. A gRPC client calling the
    service itself matches neither and is answered as before. The Files and Batch APIs'
    transcoded calls go the same way to `jobs`, the jobs service's cluster."""
    rest = [
        {
            "name": OPENAI_REST_ROUTE if index == 0 else f"{OPENAI_REST_ROUTE}-{index}",
            "match": {"safe_regex": {"regex": regex}},
            "route": copy.deepcopy(router["route"]),
            "typed_per_filter_config": copy.deepcopy(_OPENAI_STATUS),
        }
        for index, regex in enumerate(OPENAI_REST_PATHS)
    ]
    transcoded = {
        "name": OPENAI_ROUTE,
        "match": {
            "prefix": OPENAI_SERVICE_PREFIX,
            "headers": [{"name": TRANSCODED_PATH_HEADER, "present_match": True}],
        },
        "route": copy.deepcopy(router["route"]),
        "typed_per_filter_config": copy.deepcopy(_OPENAI_STATUS),
    }
    batch = copy.deepcopy(transcoded)
    batch["name"] = BATCH_ROUTE
    batch["match"]["prefix"] = BATCH_SERVICE_PREFIX
    batch["route"] = {"cluster": jobs, "timeout": "0s"}
    return [*rest, transcoded, batch]


def _status_is(op: str, code: int) -> dict[str, Any]:
    runtime_key = f"front_door.openai_local_reply.{op.lower()}_{code}"  # required; nothing sets it
    return {
        "status_code_filter": {"comparison": {"op": op, "value": {"default_value": code, "runtime_key": runtime_key}}}
    }


def openai_local_replies(max_request_bytes: int) -> dict[str, Any]:
    """The front door's local_reply_config: what Envoy itself answers on the OpenAI paths
    (413 too large, 404 no such method or an OpenAI endpoint not served here, 503 no router or no authorization service, 504,
    any other 4xx or 5xx) in OpenAI's error shape; everything else, the native REST API
    and gRPC callers included, as before. A request is on the OpenAI paths by its REST
    path: in :path before the transcoder, in x-envoy-original-path after it (a gRPC
    client has neither). Refusals the gateway already shaped are left alone: the rate
    limiter's (response flag RL) and the authorization service's (its dynamic metadata
    says so)."""
    # A header's value is matched whole, query string and all.
    on_openai_path = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {"name": name, "string_match": {"safe_regex": {"regex": path + r"(\?.*)?"}}}
                    }
                }
                for path in OPENAI_REST_PATHS
                for name in (":path", TRANSCODED_PATH_HEADER)
            ]
        }
    }
    on_unserved_path = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": prefix}}}}
                for prefix in OPENAI_UNSERVED_PREFIXES
            ]
        }
    }
    shaped = {
        "or_filter": {
            "filters": [
                {"response_flag_filter": {"flags": ["RL"]}},
                {
                    "metadata_filter": {
                        "matcher": {
                            "filter": "envoy.filters.http.ext_authz",
                            "path": [{"key": SHAPED_METADATA_KEY}],
                            "value": {"bool_match": True},
                        },
                        "match_if_key_not_found": False,
                    }
                },
            ]
        }
    }
    failed = "the mesh could not serve this request: %RESPONSE_CODE_DETAILS%"
    replies = [  # (comparison, status, code, message), first match wins
        ("EQ", 404, "unknown_url", "Invalid URL (%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%)"),
        (
            "EQ",
            413,
            "request_too_large",
            f"the request body is larger than the {max_request_bytes / 2**20:g} MiB this mesh accepts",
        ),
        ("EQ", 503, "service_unavailable", failed),
        ("EQ", 504, "timeout", failed),
        ("GE", 500, "server_error", failed),
        ("GE", 400, "invalid_request", "%LOCAL_REPLY_BODY%"),
    ]
    mappers: list[dict[str, Any]] = [{"filter": {"and_filter": {"filters": [copy.deepcopy(on_openai_path), shaped]}}}]
    for op, status, code, message in replies:
        error = {"message": message, "type": error_type(status), "param": None, "code": code}
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [copy.deepcopy(on_openai_path), _status_is(op, status)]}},
                "body_format_override": {"json_format": {"error": error}, "content_type": "application/json"},
            }
        )
    not_served = {"message": replies[0][3], "type": error_type(404), "param": None, "code": replies[0][2]}
    mappers.append(
        {
            "filter": {"and_filter": {"filters": [on_unserved_path, _status_is("EQ", 404)]}},
            "body_format_override": {"json_format": {"error": not_served}, "content_type": "application/json"},
        }
    )
    return {"mappers": mappers}
