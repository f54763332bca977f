"""One way to run a gRPC server inside a test: `serving()`.

It binds port 0 on 127.0.0.1 (the kernel picks, so nothing can race for the port; an
application's settings may name one, for a test that restarts a server in place), opens
a channel to it, and on the way out, whether or not the test failed, closes the channel
and stops the server (with `grace` seconds for calls in flight: one for an application,
as under serve(), none for a test's own servicers). It serves either

- an application of the runtime kit (`serving(app, settings)`): the server
  `create_server` builds, exactly as `serve()` runs it (health, reflection, the
  interceptors); `app.start(health)` runs after the port is bound (unless `start=False`,
  for a test that looks at NOT_SERVING first) and `app.close()` after the server stops;
- or servicers of a test's own (`serving([(add_to_server, servicer), ...])`), with the
  kit's server options, and the standard health service when `health` is given
  (`health=True`, or the statuses to start with).

`async with` runs a grpc.aio server on the running event loop; plain `with` runs a
threaded grpc.server, for servers that must answer while synchronous code runs (an OTLP
collector the whole session's meshes export to). Either way the value is a `Served`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer

from services.runtime.server import SERVER_OPTIONS, Application, create_server
from services.runtime.settings import ServiceSettings

Registrations = Sequence[tuple[Callable[[Any, Any], None], Any]]
HOST = "127.0.0.1"


@dataclass
class Served:
    port: int
    server: Any  # grpc.aio.Server or grpc.Server: a test may stop it early (stopping twice is harmless)
    channel: Any  # grpc.aio.Channel under `async with`, grpc.Channel under `with`
    health: Any = None  # the health servicer: the kit's, or the one `health=` added
    app: Application | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class serving:  # lower case: used like the context manager functions beside it
    """A gRPC server on a port of its own for the body of a `with` or `async with`."""

    def __init__(
        self,
        what: Application | Registrations,
        settings: ServiceSettings | None = None,
        *,
        health: bool | Mapping[str, int] = False,
        start: bool = True,
        grace: float | None = None,
    ) -> None:
        if isinstance(what, Application) and settings is None:
            raise TypeError("serving(app, settings): an application is served with its settings")
        self.what, self.settings, self.health, self.start = what, settings, health, start
        self.grace = grace if grace is not None else (1.0 if isinstance(what, Application) else 0.0)
        self._running: Any = None

    async def __aenter__(self) -> Served:
        self._running = self._serve_async()
        return await self._running.__aenter__()

    async def __aexit__(self, *exc: object) -> bool | None:
        return await self._running.__aexit__(*exc)

    def __enter__(self) -> Served:
        if isinstance(self.what, Application):
            raise TypeError("an application of the runtime kit runs on grpc.aio: use `async with serving(...)`")
        self._running = self._serve_threaded()
        return self._running.__enter__()

    def __exit__(self, *exc: object) -> bool | None:
        return self._running.__exit__(*exc)

    @contextlib.asynccontextmanager
    async def _serve_async(self) -> AsyncIterator[Served]:
        app = self.what if isinstance(self.what, Application) else None
        if app is not None:
            bound = await create_server(self.settings, app)
            server, port, health_servicer = bound.server, bound.port, bound.health
        else:
            server = grpc.aio.server(options=SERVER_OPTIONS)
            health_servicer = AsyncHealthServicer() if self.health is not False else None
            for name, status in self._statuses().items():
                await health_servicer.set(name, status)
            port = self._register(server, health_servicer)
        await server.start()
        channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
        try:
            served = Served(port, server, channel, health_servicer, app)
            if app is not None and self.start:
                await app.start(health_servicer)
            yield served
        finally:
            await channel.close()
            await server.stop(self.grace)
            if app is not None:
                await app.close()

    @contextlib.contextmanager
    def _serve_threaded(self) -> Iterator[Served]:
        server = grpc.server(ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
        health_servicer = health.HealthServicer() if self.health is not False else None
        for name, status in self._statuses().items():
            health_servicer.set(name, status)
        port = self._register(server, health_servicer)
        server.start()
        channel = grpc.insecure_channel(f"{HOST}:{port}")
        try:
            yield Served(port, server, channel, health_servicer)
        finally:
            channel.close()
            server.stop(self.grace).wait()

    def _statuses(self) -> Mapping[str, int]:
        return self.health if isinstance(self.health, Mapping) else {}

    def _register(self, server: Any, health_servicer: Any) -> int:
        for add_to_server, servicer in self.what:
            add_to_server(servicer, server)
        if health_servicer is not None:
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port(f"{HOST}:0")
        if port == 0:
            raise RuntimeError(f"could not bind {HOST}:0")
        return port
