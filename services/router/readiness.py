"""Per-model health on the router: `infermesh.router.v1.RouterService/<model>` is SERVING
while the router can send that model's requests somewhere (a deployment with traffic on a
backend it knows and isn't cooling down), NOT_SERVING otherwise.

A backend's own health says it has the model loaded; this says the router has heard so.
The router follows the catalog (and the registry) on its own, so right after a replica
becomes ready — in Consul especially — Envoy may route to it while the router still
answers MODEL_NOT_DEPLOYED. `make run` and the tests wait on this, and operators can
probe it (`grpc_health_probe -service infermesh.router.v1.RouterService/<model>`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from services.runtime.catalog import model_health_service

# Routability changes with the registry's feed, the catalog and cooldown expiries; a
# cheap in-memory check twice a second follows all three without three notifications.
POLL_SECONDS = 0.5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RoutableHealth:
    def __init__(
        self, health: HealthServicer, service: str, known: Callable[[], list[str]], routable: Callable[[], list[str]]
    ) -> None:
        self._health = health
        self._service = service
        self._known = known
        self._routable = routable
        self._published: dict[str, int] = {}

    async def refresh(self) -> None:
        """Publish each known model's status where it changed (models that disappear from
        the registry go NOT_SERVING rather than unknown, so a watcher sees them leave)."""
        routable = set(self._routable())
        for model in sorted({*self._known(), *self._published}):
            status = SERVING if model in routable else NOT_SERVING
            if self._published.get(model) != status:
                await self._health.set(model_health_service(self._service, model), status)
                self._published[model] = status

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_SECONDS)
