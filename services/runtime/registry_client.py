"""The registry, as services inside the mesh reach it: found in the catalog and called
directly (not through Envoy, whose routes the gateway itself serves), for the calls that
are never served at the front door (checking API keys, recording audit events)."""

from __future__ import annotations

import logging
import time

import grpc
from google.rpc import code_pb2
from prometheus_client import Counter

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from services.runtime.catalog import Catalog
from services.runtime.channels import InstanceChannels
from services.runtime.errors import Unavailable, status_of
from services.runtime.identity import Caller

log = logging.getLogger(__name__)
AUDIT_FAILURES = Counter(
    "infermesh_audit_record_failures_total", "Audit events that could not be recorded in the registry."
)


def outcome(error: BaseException | None, detail: str = "") -> tuple[str, str]:
    """An action's result and detail as the audit log records them: `OK` (and `detail`),
    or the error's canonical code name and message."""
    if error is None:
        return "OK", detail
    status = status_of(error)
    return code_pb2.Code.Name(status.code), status.message


def principal_of(context) -> str:
    """Who made a call, as the gateway authenticated them; `anonymous` with auth off."""
    return Caller.from_headers(context.invocation_metadata() or ()).principal or "anonymous"


class RegistryClient:
    def __init__(self, catalog: Catalog, timeout_seconds: float = 2.0) -> None:
        self._channels = InstanceChannels(catalog)
        self._timeout = timeout_seconds

    def stub(self) -> pb_grpc.RegistryServiceStub:
        return pb_grpc.RegistryServiceStub(self._channels.to("registry"))

    async def authenticate(self, secret: str) -> res.ApiKey:
        request = pb.AuthenticateApiKeyRequest(secret=secret)
        return await self.stub().AuthenticateApiKey(request, timeout=self._timeout)

    async def record(self, principal: str, action: str, resource: str, result: str, detail: str = "") -> None:
        """Record an administrative action (`principal_of` its call names who asked). An
        audit log that is down must not stop the action: the failure is logged and counted."""
        event = res.AuditEvent(principal=principal, action=action, resource=resource, result=result, detail=detail)
        started = time.monotonic()
        try:
            await self.stub().RecordAuditEvent(pb.RecordAuditEventRequest(audit_event=event), timeout=self._timeout)
        except (grpc.aio.AioRpcError, Unavailable) as error:
            AUDIT_FAILURES.inc()
            log.error(
                "audit event not recorded",
                extra={
                    "action": action,
                    "resource": resource,
                    "error": str(error),
                    "after": time.monotonic() - started,
                },
            )

    async def close(self) -> None:
        await self._channels.close()
