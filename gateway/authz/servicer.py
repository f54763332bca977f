"""Envoy's external authorization service (envoy.service.auth.v3.Authorization): every
request through the front door, REST and gRPC alike, is checked here (policy.py) before
it reaches a service. On success the request goes on with headers naming the caller —
`x-infermesh-principal`, `x-infermesh-role`, `x-infermesh-models` (the models it may
use, `*` for any) — which replace anything the client sent under those names; the
router enforces the model list. A refusal is google.rpc.Status JSON, or OpenAI's error
shape on the OpenAI-compatible paths.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as authz_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from prometheus_client import Counter

from services.authz.callers import caller_of
from services.authz.policy import Authorizer, Denied, Principal
from services.runtime.identity import HEADERS
from services.runtime.openai_errors import SHAPED_METADATA_KEY, is_openai_rest_call, openai_error

DECISIONS = Counter(
    "infermesh_authz_decisions_total", "Authorization decisions, by outcome and role.", ["outcome", "role"]
)
IDENTITY_HEADERS = HEADERS


class AuthorizationServicer(authz_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(self, request, context):
        http = request.attributes.request.http
        headers = {k.lower(): v for k, v in http.headers.items()}
        try:
            principal = await self._authorizer.decide(http.path, headers)
        except Denied as denied:
            DECISIONS.labels("denied", str(denied.http_status)).inc()
            return _denied(denied, openai=is_openai_rest_call(http.path, headers))
        DECISIONS.labels("allowed", ",".join(sorted(principal.roles)) if principal else "public").inc()
        return _allowed(principal)


def _allowed(principal: Principal | None) -> authz_pb.CheckResponse:
    identity = caller_of(principal).headers() if principal is not None else {}
    return authz_pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=authz_pb.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, value=v),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                for k, v in identity.items()
            ],
            # A client cannot claim an identity: what it sent under these names goes.
            headers_to_remove=[h for h in IDENTITY_HEADERS if h not in identity],
        ),
    )


def _denied(denied: Denied, openai: bool = False) -> authz_pb.CheckResponse:
    """The refusal Envoy answers with: google.rpc.Status JSON, or on the OpenAI paths
    OpenAI's error shape, marked in the filter's dynamic metadata so that the front
    door's local reply mappers leave it as it is."""
    status = denied.status()
    body = json.dumps(
        openai_error(status)[1] if openai else {"code": denied.code, "message": denied.message, "details": []}
    )
    shaped = struct_pb2.Struct()
    if openai:
        shaped.update({SHAPED_METADATA_KEY: True})
    return authz_pb.CheckResponse(
        dynamic_metadata=shaped,
        status=status,
        denied_response=authz_pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=denied.http_status),
            headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
                for key, value in {"content-type": "application/json", **denied.headers}.items()
            ],
            body=body,
        ),
    )
