"""Following the registry's watch feed into the router's RegistryResolver: the backlog
is replayed before the router serves, then every change as it happens; an interrupted
feed resumes after the last change seen."""

from __future__ import annotations

import asyncio
import logging

import grpc

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as registry_pb
from infermesh.registry.v1 import registry_service_pb2_grpc as registry_grpc
from services.router.core.resolvers import RegistryResolver
from services.runtime.catalog import BACKEND_HEADER

log = logging.getLogger(__name__)
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class RegistryFeed:
    def __init__(self, channel: grpc.aio.Channel, registry_backend: str, resolver: RegistryResolver) -> None:
        self._stub = registry_grpc.RegistryServiceStub(channel)
        self._metadata = [(BACKEND_HEADER, registry_backend)]
        self.resolver = resolver
        self._current = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self, timeout: float) -> None:
        """Follow the feed; return once the backlog has been replayed."""
        self._tasks = [
            asyncio.create_task(self._follow(), name="registry-feed"),
            asyncio.create_task(self.resolver.watch_pools(), name="pool-watcher"),
        ]
        try:
            await asyncio.wait_for(self._current.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"the registry's feed did not catch up within {timeout:.0f}s") from None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                call = self._stub.WatchChanges(
                    registry_pb.WatchChangesRequest(after_sequence=self.resolver.sequence), metadata=self._metadata
                )
                async for change in call:
                    self.resolver.apply(change)
                    failures = 0
                    if change.kind == res.Change.KIND_BOOKMARK:
                        self._current.set()
                problem = "ended"
            except grpc.aio.AioRpcError as error:
                problem = error.code().name
            delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
            failures += 1
            log.warning(
                "registry feed interrupted; resuming",
                extra={"problem": problem, "after_sequence": self.resolver.sequence, "retry_in": delay},
            )
            await asyncio.sleep(delay)
