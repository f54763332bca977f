"""gRPC channels to the instances of a kind the catalog lists, one per address and
reused, with trace context on every call: how a service reaches another directly
(the gateway and inference servers the registry, the vector service the router)."""

from __future__ import annotations

import grpc

from services.runtime.catalog import Catalog
from services.runtime.errors import Unavailable
from services.runtime.telemetry import client_interceptors


class InstanceChannels:
    def __init__(self, catalog: Catalog | None) -> None:
        self._catalog = catalog
        self._channels: dict[str, grpc.aio.Channel] = {}

    def to(self, kind: str, address: str = "") -> grpc.aio.Channel:
        """A channel to `address`, or else to the first instance of `kind` in the catalog."""
        if not address:
            instances = self._catalog.instances(kind) if self._catalog is not None else []
            if not instances:
                raise Unavailable(f"no {kind} in the catalog", reason="NO_INSTANCE", kind=kind)
            address = f"{instances[0].host}:{instances[0].port}"
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, interceptors=client_interceptors())
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
