"""The ADS server: serves Envoy its clusters and routes over ADS (state of the world, v3),
computed from the catalog (resources.py) and pushed again whenever the catalog changes —
a replica registering or leaving, a model becoming ready — so Envoy follows without a
restart.

Per stream and resource type the protocol is: Envoy asks (no nonce), we answer with the
current version and a nonce; Envoy ACKs (same nonce, that version) or NACKs (same nonce,
`error_detail`); a NACKed version is not sent again, and a new catalog version is pushed
to every stream that has asked for that type.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import Counter, Gauge

from gateway import envoy_config
from gateway.xds.resources import CLUSTER, ROUTE, Snapshot, digest, resources
from services.runtime.catalog import Catalog, ServiceInstance

log = logging.getLogger(__name__)
PUSHES = Counter("infermesh_xds_responses_total", "xDS responses sent, by resource type.", ["type"])
NACKS = Counter("infermesh_xds_nacks_total", "xDS responses Envoy rejected, by resource type.", ["type"])
VERSION = Gauge("infermesh_xds_version", "The resource version being served (a counter).")
STREAMS = Gauge("infermesh_xds_streams", "Envoy ADS streams open now.")


@dataclass
class _Subscription:
    names: tuple[str, ...] = ()  # empty: every resource of the type
    sent_version: str = ""
    nonce: str = ""
    rejected_version: str = ""


@dataclass
class _Stream:
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        catalog: Catalog,
        limits: envoy_config.Limits | None = None,
        count_requests: bool = True,
    ) -> None:
        self._catalog = catalog
        self._limits = limits
        self._count_requests = count_requests  # whether Envoy asks the rate limit service
        self._versions = itertools.count(1)
        self._nonces = itertools.count(1)
        self.current = Snapshot("0", {CLUSTER: {}, ROUTE: {}})
        self._digest = ""
        self._changed = asyncio.Condition()
        self._follower: asyncio.Task | None = None

    async def start(self) -> None:
        """Compute the first snapshot, then follow the catalog."""
        first = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            try:
                async for instances in self._catalog.watch():
                    await self._update(instances)
                    if not first.done():
                        first.set_result(None)
            except Exception as error:
                # A snapshot that cannot be built fails the start, instead of a gateway
                # waiting for a first snapshot that never comes.
                if not first.done():
                    first.set_exception(error)
                raise

        self._follower = asyncio.create_task(follow(), name="xds-catalog-follower")
        await first

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    async def _update(self, instances: list[ServiceInstance]) -> None:
        candidate = resources(instances, self._limits, self._count_requests)
        fingerprint = digest(candidate)
        if fingerprint == self._digest:
            return
        version = str(next(self._versions))
        self.current, self._digest = Snapshot(version, candidate), fingerprint
        VERSION.set(int(version))
        log.info(
            "new xDS version",
            extra={"version": version, "clusters": len(candidate[CLUSTER]), "instances": len(instances)},
        )
        async with self._changed:
            self._changed.notify_all()

    async def StreamAggregatedResources(self, request_iterator, context) -> AsyncIterator:
        stream = _Stream()
        requests: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                requests.put_nowait(request)
            requests.put_nowait(None)

        reader = asyncio.create_task(read())
        STREAMS.inc()
        try:
            while True:
                version = self.current.version
                for response in self._due(stream):
                    yield response
                request = await self._next(requests, version)
                if request is None:
                    return
                if request is not _CHANGED:
                    self._receive(stream, request)
        finally:
            STREAMS.dec()
            reader.cancel()

    async def _next(self, requests: asyncio.Queue, version: str):
        """The next request, or _CHANGED when the snapshot moves past `version` first."""
        getter = asyncio.ensure_future(requests.get())
        waiter = asyncio.ensure_future(self._wait_for_change(version))
        done, pending = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return getter.result() if getter in done else _CHANGED

    async def _wait_for_change(self, version: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.current.version != version)

    def _receive(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        subscription = stream.subscriptions.setdefault(request.type_url, _Subscription())
        if request.response_nonce and request.response_nonce != subscription.nonce:
            return  # about an older response: a newer one is on its way
        if request.HasField("error_detail"):
            NACKS.labels(_short(request.type_url)).inc()
            subscription.rejected_version = subscription.sent_version
            log.error(
                "Envoy rejected xDS resources",
                extra={
                    "type": request.type_url,
                    "version": subscription.sent_version,
                    "error": request.error_detail.message,
                },
            )
        names = tuple(sorted(request.resource_names))
        if names != subscription.names:
            subscription.names = names
            subscription.sent_version = ""  # a new set of names needs an answer

    def _due(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        """Responses owed: every subscribed type whose current version it has not been sent."""
        responses = []
        for type_url, subscription in stream.subscriptions.items():
            version = self.current.version
            if version in (subscription.sent_version, subscription.rejected_version):
                continue
            available = self.current.resources.get(type_url, {})
            names = subscription.names or tuple(available)
            nonce = str(next(self._nonces))
            responses.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=version,
                    resources=[available[name] for name in names if name in available],
                    type_url=type_url,
                    nonce=nonce,
                )
            )
            subscription.sent_version, subscription.nonce = version, nonce
            PUSHES.labels(_short(type_url)).inc()
        return responses


_CHANGED = object()


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
