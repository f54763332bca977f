"""The server factory and run loop shared by every service (DESIGN.md decision 5).

create_server() builds and binds a server without running it, so tests bind port 0;
serve() adds signal handling and the shutdown order: NOT_SERVING → drain →
stop(grace) → release the application's resources.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.runtime import __version__
from services.runtime.catalog import Catalog, EmbeddedCatalog, ServiceInstance, default_instance_name
from services.runtime.interceptors import ErrorInterceptor, MetricsInterceptor
from services.runtime.logs import configure_logging
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import configure_tracing, server_interceptors

log = logging.getLogger(__name__)
REGISTRATION_SECONDS = 0.5  # how often an instance checks whether its entry changed

# A stale server on the same port must not silently take traffic (grpc.aio sets
# SO_REUSEPORT by default); streams can be long, so keepalives keep idle links honest.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


@dataclass(frozen=True)
class Registration:
    """One gRPC service an application serves."""

    full_name: str  # e.g. "infermesh.inference.v1.InferenceService"
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class Application(abc.ABC):
    """What a service plugs into the kit: its gRPC services, how it starts and stops, and
    how it appears in the catalog. Subclasses set `name` and override what applies."""

    # The process's name in logs and traces, e.g. "router".
    name: str
    # Services another process serves behind the same front door, which this server's
    # reflection describes too (reflection through the front door reaches the router).
    front_door_services: Sequence[str] = ()
    # The catalog this application reads, if any: the kit registers the instance in it
    # rather than opening a second one.
    catalog: Catalog | None = None
    # Server interceptors of the application's own, run after the kit's metrics and
    # before its validation and error mapping (so they answer their own refusals).
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()

    @property
    def kind(self) -> str:
        """The kind of service in the catalog (replicas share it); the name unless overridden."""
        return self.name

    @property
    def capabilities(self) -> Sequence[str]:
        """What a backend can do now (text-generation, embedding, ...); none for other services."""
        return ()

    def ready_models(self) -> Sequence[str] | None:
        """Models a backend serves now, advertised in the catalog; None for services that
        serve no models."""
        return None

    @abc.abstractmethod
    def registrations(self) -> Sequence[Registration]: ...

    @abc.abstractmethod
    async def start(self, health: HealthServicer) -> None:
        """Load what the service needs, then mark it SERVING. Runs after the port is bound."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release models and clients; called after the server has stopped."""


def open_catalog_from(settings: ServiceSettings) -> Catalog | None:
    """The catalog the settings name: Consul, the embedded one (a directory and/or fixed
    entries), or None when they name neither."""
    from services.runtime.catalogs import open_catalog

    fixed = EmbeddedCatalog.load(settings.catalog_file).instances() if settings.catalog_file else ()
    if not (settings.consul_http_addr or settings.catalog_dir or fixed):
        return None
    return open_catalog(settings.consul_http_addr, settings.catalog_dir, fixed)


def catalog_entry(settings: ServiceSettings, app: Application, port: int) -> ServiceInstance:
    """How this instance appears in the catalog (ready models and capabilities are filled
    in by keep_registered, which follows them)."""
    kind = app.kind
    host = settings.advertise_host or settings.grpc_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return ServiceInstance(
        name=settings.instance_name or default_instance_name(kind, port),
        kind=kind,
        host=host,
        port=port,
        version=__version__,
    )


async def keep_registered(catalog: Catalog, entry: ServiceInstance, app: Application) -> None:
    """Register now, then again whenever the app's ready models change (how routers and
    Envoy learn that a model finished loading or was unloaded)."""
    registered: ServiceInstance | None = None
    failures = 0
    while True:
        ready = app.ready_models()
        current = entry.with_models(ready) if ready is not None else entry
        current = replace(current, capabilities=tuple(app.capabilities))
        if current != registered:
            try:
                await catalog.register(current)
                registered, failures = current, 0
            except Exception as exc:  # noqa: BLE001 - the catalog may be down for a while
                failures += 1
                log.warning("catalog registration failed; retrying", extra={"error": repr(exc), "attempt": failures})
        await asyncio.sleep(min(REGISTRATION_SECONDS * 2**failures, 10.0))


@dataclass
class BoundServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer


async def create_server(settings: ServiceSettings, app: Application) -> BoundServer:
    """Build the server with all registrations, health (NOT_SERVING) and reflection, and bind it."""
    interceptors = [*server_interceptors(), MetricsInterceptor(), *app.interceptors, ErrorInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = []
    for registration in app.registrations():
        registration.add_to_server(registration.servicer, server)
        names.append(registration.full_name)
        await health.set(registration.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [*names, *app.front_door_services, health_name, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.grpc_host}:{settings.grpc_port}")
    return BoundServer(server, port, health)


async def mark_serving(health: HealthServicer, services: Sequence[str]) -> None:
    for name in ["", *services]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve(settings: ServiceSettings, app: Application) -> int:
    """Run a service until SIGTERM or SIGINT, then shut it down in order; the exit code."""
    configure_logging(app.name, settings.log_level, settings.log_json)
    configure_tracing(app.name)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.grpc_host)
    bound = await create_server(settings, app)
    await bound.server.start()
    log.info("%s listening on %s:%d", app.name, settings.grpc_host, bound.port)
    # Apps that read the catalog (router, gateway) share theirs.
    catalog = app.catalog or open_catalog_from(settings)
    entry = catalog_entry(settings, app, bound.port)
    registrar = asyncio.create_task(keep_registered(catalog, entry, app)) if catalog is not None else None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(app.start(bound.health), name="start")
    starting.add_done_callback(lambda task: _report_start(task, stop))
    await stop.wait()
    failed = starting.done() and not starting.cancelled() and starting.exception() is not None

    log.info("shutting down: NOT_SERVING, draining for %.1fs", settings.drain_seconds)
    starting.cancel()
    if registrar is not None:
        # Leave the catalog first, so routers and Envoy stop sending here while we drain.
        registrar.cancel()
        await asyncio.gather(registrar, return_exceptions=True)
        with contextlib.suppress(Exception):
            await catalog.deregister(entry)
    await bound.health.enter_graceful_shutdown()
    await asyncio.sleep(settings.drain_seconds)
    await bound.server.stop(settings.shutdown_grace_seconds)
    await app.close()
    if catalog is not None and catalog is not app.catalog:
        await catalog.close()
    log.info("stopped")
    return 1 if failed else 0


def _report_start(task: asyncio.Task, stop: asyncio.Event) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        # A service that cannot load what it serves exits, so its supervisor sees it.
        log.error("start-up failed", exc_info=task.exception())
        stop.set()
