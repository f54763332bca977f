"""Envoy's global rate limit service (envoy.service.ratelimit.v3.RateLimitService), answered
by the mesh's limiter (services/limits: counting, stores, configuration).

Descriptors. Envoy's `envoy.filters.http.ratelimit` filter (after ext_authz, domain
`infermesh`) sends one descriptor per limit to check, with these entries:
  - `kind`: `requests_per_minute`, `tokens_per_minute` or `concurrent`;
  - `api_key`: the caller, as ext_authz names it in `x-infermesh-principal`;
  - `model` (optional): the model asked for; present, the descriptor checks the limits
    under `models` for that caller and model, absent, the caller's own limits;
  - `surface` (optional, counts nothing): `openai` on the OpenAI-compatible routes, whose
    refusals are in OpenAI's error shape.
A descriptor without `kind` and `api_key`, or with no limit configured for it, is answered
OK with no limit. `hits_addend` (the descriptor's, else the request's; default 1) is the
number of requests a `requests_per_minute` descriptor counts.

Answers. OVER_LIMIT carries `retry-after` (whole seconds, rounded up),
`x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`, `x-infermesh-ratelimit`
(the limit that refused, e.g. `tokens_per_minute`) and a JSON google.rpc.Status body with
an ErrorInfo naming the limit (on the `openai` surface, OpenAI's error shape built from the
same error). An OK answer carries the same x-ratelimit headers for the limit closest to
running out. When the limiter's store is unreachable it fails open; Envoy does the same
when this service is down (`failure_mode_deny: false`, its default).
"""

from __future__ import annotations

import json
import math

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2, json_format

from services.limits.config import OPENAI_SURFACE, SURFACE_KEY
from services.limits.limiter import LEASE_HEADER, Decision, Descriptor, RateLimiter, limit_headers, refusal
from services.runtime.openai_errors import openai_error


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._unit = _UNITS.get(limiter.config.window_seconds, rls_pb2.RateLimitResponse.RateLimit.UNKNOWN)

    async def ShouldRateLimit(self, request, context):
        hits = request.hits_addend or 1
        descriptors = [
            Descriptor({e.key: e.value for e in d.entries}, d.hits_addend.value if d.HasField("hits_addend") else hits)
            for d in request.descriptors
        ]
        decision = await self._limiter.check(descriptors)
        openai = any(d.entries.get(SURFACE_KEY) == OPENAI_SURFACE for d in descriptors)
        return response(decision, self._unit, self._limiter.config.window_seconds, openai=openai)


_Limit = rls_pb2.RateLimitResponse.RateLimit
_UNITS = {1.0: _Limit.SECOND, 60.0: _Limit.MINUTE, 3600.0: _Limit.HOUR, 86400.0: _Limit.DAY}


def response(decision: Decision, unit: int, window_seconds: float, openai: bool = False) -> rls_pb2.RateLimitResponse:
    ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    reply = rls_pb2.RateLimitResponse(overall_code=ok if decision.allowed else over)
    for status in decision.statuses:
        item = reply.statuses.add(code=ok if status.allowed else over)
        if status.limit is not None:
            item.current_limit.CopyFrom(
                _Limit(name=status.kind, requests_per_unit=min(status.limit, 2**32 - 1), unit=unit)
            )
            item.limit_remaining = min(status.remaining or 0, 2**32 - 1)
        if status.reset_seconds is not None:
            item.duration_until_reset.CopyFrom(_duration(status.reset_seconds))
    binding = decision.binding
    headers = limit_headers(binding) if binding is not None else {}
    if not decision.allowed and binding is not None:
        error = refusal(binding, window_seconds)
        headers["retry-after"] = str(error.retry_after)
        status = error.to_status()
        body = openai_error(status)[1] if openai else json_format.MessageToDict(status)
        reply.raw_body = json.dumps(body).encode()
    reply.response_headers_to_add.extend(base_pb2.HeaderValue(key=k, value=v) for k, v in headers.items())
    if decision.lease:
        reply.request_headers_to_add.add(key=LEASE_HEADER, value=decision.lease)
    return reply


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(math.ceil(max(seconds, 0) * 1000))
    return duration
