"""The server factory and run loop shared by every service (DESIGN.md decision 5).

create_server() builds and binds a server without running it, so tests bind port 0;
serve() adds signal handling and the shutdown order: NOT_SERVING → drain →
stop(grace) → release the application's resources.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from infermesh_runtime.interceptors import ErrorInterceptor, MetricsInterceptor
from infermesh_runtime.logs import configure_logging
from infermesh_runtime.settings import ServiceSettings
from infermesh_runtime.telemetry import configure_tracing, server_interceptors

log = logging.getLogger(__name__)

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


class Application(Protocol):
    """What a service plugs into the kit."""

    name: str

    def registrations(self) -> Sequence[Registration]: ...

    async def start(self, health: HealthServicer) -> None:
        """Load what the service needs, then mark it SERVING. Runs after the port is bound."""

    async def close(self) -> None:
        """Release models and clients; called after the server has stopped."""


def reflected_elsewhere(app: Application) -> Sequence[str]:
    """Services another process serves behind the same Envoy front door, which this
    server's reflection describes too (reflection through the front door reaches the
    router, and grpcurl should see every public service there)."""
    return getattr(app, "front_door_services", ())


@dataclass
class BoundServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer


async def create_server(settings: ServiceSettings, app: Application) -> BoundServer:
    """Build the server with all registrations, health (NOT_SERVING) and reflection, and bind it."""
    interceptors = [*server_interceptors(), MetricsInterceptor(), ErrorInterceptor()]
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
        [*names, *reflected_elsewhere(app), health_name, reflection.SERVICE_NAME], server
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
    await bound.health.enter_graceful_shutdown()
    await asyncio.sleep(settings.drain_seconds)
    await bound.server.stop(settings.shutdown_grace_seconds)
    await app.close()
    log.info("stopped")
    return 1 if failed else 0


def _report_start(task: asyncio.Task, stop: asyncio.Event) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        # A service that cannot load what it serves exits, so its supervisor sees it.
        log.error("start-up failed", exc_info=task.exception())
        stop.set()
