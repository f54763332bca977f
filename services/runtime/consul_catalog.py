"""The catalog in Consul (chosen when CONSUL_HTTP_ADDR is set; see catalogs.py).

Writing: each instance registers with its local agent (`PUT /v1/agent/service/register`)
as service `kind` with ID `name`, so replicas group under one service name; its models
ready go in tags (`model:<id>`) and meta, with a gRPC health check on its own address.
Registering the same ID again replaces the entry (how readiness changes are published)
and keeps the check's status, as Consul does.

Reading: `start()` loads the view, then follows it with Consul's blocking queries: one on
the service list and one per infermesh service on its passing instances
(`/v1/health/service/<kind>?passing`), each waiting on the index it last saw, so a
change reaches watchers as soon as Consul has it. When Consul cannot be reached the last
view stays (a router keeps routing to the instances it knew) and the query is retried
with backoff; the failure is logged once per attempt.

The client is py-consul's API on an httpx transport: py-consul's own asyncio client
(`consul.aio`) needs aiohttp, which the mesh does not otherwise use, and its sync client
would hold a thread in every blocking query, which cancellation cannot reach.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import consul.base
import httpx
from consul.exceptions import ConsulException, Timeout
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_random_exponential

from services.runtime.catalog import ServiceInstance

log = logging.getLogger(__name__)

TAG = "infermesh"  # on every instance we register; the services we follow
MODEL_TAG = "model:"
META_VALUE_LIMIT = 512  # Consul refuses longer meta values
CHECK_INTERVAL = "5s"
CHECK_TIMEOUT = "2s"
# A replica killed without deregistering is removed once its check has failed this long.
DEREGISTER_CRITICAL_AFTER = "1m"
MIN_QUERY_SECONDS = 1.0  # the least a blocking query that brings nothing new may take


class ConsulError(RuntimeError):
    """Consul could not be reached, or refused a request (for example an ACL denial)."""


class ConsulCatalog:
    """Instances registered in Consul (healthy ones only) plus `fixed` ones."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        fixed: Iterable[ServiceInstance] = (),
        wait_seconds: float = 60.0,
        request_timeout: float = 5.0,
        start_timeout: float = 10.0,
    ) -> None:
        """`address` is CONSUL_HTTP_ADDR's form (`host:port` or `http(s)://host:port`);
        `token` the ACL token, CONSUL_HTTP_TOKEN when not given (as the consul CLI does).
        A blocking query waits up to `wait_seconds`; other requests get `request_timeout`;
        `start()` keeps trying for `start_timeout` before it gives up."""
        self._scheme, host, self._port = _parse_address(address)
        self._host = f"[{host}]" if ":" in host else host  # as it goes in a URL
        self._token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN", "")
        self._fixed = {s.name: s for s in fixed}
        self._wait_seconds = wait_seconds
        self._request_timeout = request_timeout
        self._start_timeout = start_timeout
        self._client: _AsyncConsul | None = None
        self._healthy: dict[str, list[ServiceInstance]] = {}  # service (kind) -> passing instances
        self._view: list[ServiceInstance] = sorted(self._fixed.values(), key=_by_name)
        self._version = 0
        self._changed = asyncio.Condition()  # binds to the running loop on first use
        self._followers: dict[str, asyncio.Task] = {}  # "" follows the service list

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    # -- reading -------------------------------------------------------------------

    def instances(self, kind: str | None = None) -> list[ServiceInstance]:
        return [s for s in self._view if kind is None or s.kind == kind]

    async def start(self) -> None:
        """Load the view (retrying for `start_timeout`; ConsulError if Consul stays
        unreachable or refuses us), then follow changes in the background."""
        if self._followers:
            return
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self._start_timeout),
            wait=wait_random_exponential(multiplier=0.1, max=2.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    index, services = await self._services(None)
                    names = _ours(services)
                    found = {name: await self._passing(name, None) for name in names}
        except (httpx.HTTPError, ConsulException) as exc:
            raise ConsulError(f"Consul at {self.url} did not answer the catalog read: {_describe(exc)}") from exc
        for name, (service_index, instances) in found.items():
            self._healthy[name] = instances
            self._follow(name, service_index)
        self._followers[""] = asyncio.create_task(self._follow_services(index), name="consul-services")
        await self._publish()

    async def watch(self) -> AsyncIterator[list[ServiceInstance]]:
        seen = -1
        while True:
            if seen != self._version:
                seen = self._version
                yield list(self._view)
            async with self._changed:
                await self._changed.wait_for(lambda seen=seen: seen != self._version)

    async def close(self) -> None:
        followers, self._followers = list(self._followers.values()), {}
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        if self._client is not None:
            await self._client.http.close()
            self._client = None

    # -- registering ---------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        """Register (or replace) this instance with the agent; ConsulError on failure
        (the runtime kit retries)."""
        try:
            await self._consul().agent.service.register(
                instance.kind,
                service_id=instance.name,
                address=instance.host,
                port=instance.port,
                tags=registration_tags(instance),
                meta=registration_meta(instance),
                check=grpc_check(instance),
            )
        except (httpx.HTTPError, ConsulException) as exc:
            raise ConsulError(
                f"registering {instance.name} with Consul at {self.url} failed: {_describe(exc)}"
            ) from exc

    async def deregister(self, instance: ServiceInstance) -> None:
        try:
            await self._consul().agent.service.deregister(instance.name)
        except (httpx.HTTPError, ConsulException) as exc:
            raise ConsulError(
                f"deregistering {instance.name} from Consul at {self.url} failed: {_describe(exc)}"
            ) from exc

    # -- following -----------------------------------------------------------------

    def _consul(self) -> _AsyncConsul:
        if self._client is None:
            self._client = _AsyncConsul(
                host=self._host, port=self._port, scheme=self._scheme, request_timeout=self._request_timeout
            )
            self._client.token = self._token or None  # py-consul prefers the environment's
        return self._client

    def _wait(self) -> str:
        return f"{max(1, round(self._wait_seconds * 1000))}ms"

    async def _services(self, index: str | None) -> tuple[str, dict[str, list[str]]]:
        return await self._consul().catalog.services(index=index, wait=self._wait())

    async def _passing(self, name: str, index: str | None) -> tuple[str, list[ServiceInstance]]:
        new_index, entries = await self._consul().health.service(name, index=index, wait=self._wait(), passing=True)
        return new_index, sorted((instance_from_entry(entry) for entry in entries or ()), key=_by_name)

    def _follow(self, name: str, index: str) -> None:
        self._followers[name] = asyncio.create_task(self._follow_service(name, index), name=f"consul-{name}")

    async def _follow_services(self, index: str) -> None:
        async for services in self._blocking("services", self._services, index):
            names = _ours(services)
            for gone in set(self._followers) - names - {""}:
                self._followers.pop(gone).cancel()
                self._healthy.pop(gone, None)
            for new in names - set(self._followers):
                self._follow(new, "")  # its first query answers at once
            await self._publish()

    async def _follow_service(self, name: str, index: str) -> None:
        async for instances in self._blocking(f"health/service/{name}", lambda i: self._passing(name, i), index):
            self._healthy[name] = instances
            await self._publish()

    async def _blocking(
        self, query: str, fetch: Callable[[str | None], Awaitable[tuple[str, Any]]], index: str
    ) -> AsyncIterator[Any]:
        """Yield `fetch`'s result each time Consul's index for it moves; retry failures
        forever with backoff (the view meanwhile stays as it was)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, Exception)),
            wait=wait_random_exponential(multiplier=0.2, max=10.0),
            before_sleep=lambda state: _log_failure(self.url, query, state),
        )
        while True:
            failed = False
            began = time.monotonic()
            async for attempt in retrying:
                failed = attempt.retry_state.attempt_number > 1
                with attempt:
                    new_index, result = await fetch(index or None)
            if failed:
                log.info("consul query recovered", extra={"consul": self.url, "query": query})
            new_index = _next_index(index, new_index)
            if new_index != index:
                index = new_index
                yield result
            elif time.monotonic() - began < MIN_QUERY_SECONDS:
                # Nothing new, at once: something between us and Consul ignores blocking
                # queries. Don't spin.
                await asyncio.sleep(MIN_QUERY_SECONDS)

    async def _publish(self) -> None:
        found = dict(self._fixed)
        for instances in self._healthy.values():
            found.update((s.name, s) for s in instances)
        view = sorted(found.values(), key=_by_name)
        if view == self._view:
            return  # Consul's index moves for changes that don't touch what we show
        self._view = view
        self._version += 1
        async with self._changed:
            self._changed.notify_all()


# -- the registration's shape ------------------------------------------------------


def registration_tags(instance: ServiceInstance) -> list[str]:
    return [TAG, instance.kind, *(f"{MODEL_TAG}{model}" for model in instance.models)]


def registration_meta(instance: ServiceInstance) -> dict[str, str]:
    meta = {
        "kind": instance.kind,
        "models": ",".join(instance.models),
        "capabilities": ",".join(instance.capabilities),
        "version": instance.version,
    }
    # The tags carry the models in full; meta is for people and filters, and Consul
    # refuses a value over 512 characters.
    return {key: value for key, value in meta.items() if len(value) <= META_VALUE_LIMIT}


def grpc_check(instance: ServiceInstance) -> dict[str, Any]:
    """The agent calls grpc.health.v1 Check with the server-wide service name (""): the
    runtime kit reports SERVING there once the models are loaded, NOT_SERVING on shutdown."""
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    return {
        "Name": f"{instance.kind} gRPC health",
        "GRPC": f"{host}:{instance.port}",
        "GRPCUseTLS": False,
        "Interval": CHECK_INTERVAL,
        "Timeout": CHECK_TIMEOUT,
        "DeregisterCriticalServiceAfter": DEREGISTER_CRITICAL_AFTER,
    }


def instance_from_entry(entry: Mapping[str, Any]) -> ServiceInstance:
    """A /v1/health/service entry as an instance (registered by us or by hand)."""
    service, node = entry["Service"], entry.get("Node") or {}
    meta = service.get("Meta") or {}
    tags = service.get("Tags") or []
    models = [tag.removeprefix(MODEL_TAG) for tag in tags if tag.startswith(MODEL_TAG)]
    if not models:
        models = _split(meta.get("models", ""))
    return ServiceInstance(
        name=service["ID"],
        kind=meta.get("kind") or service["Service"],
        host=service.get("Address") or node.get("Address", ""),
        port=int(service["Port"]),
        models=tuple(models),
        capabilities=tuple(_split(meta.get("capabilities", ""))),
        version=meta.get("version", ""),
    )


# -- py-consul on httpx --------------------------------------------------------------


Callback = Callable[[consul.base.Response], Any]
Params = list[tuple[str, Any]] | None


class _HttpxClient(consul.base.HTTPClient):
    """py-consul's transport interface on httpx: each method returns an awaitable of what
    the callback makes of the response, as consul.aio's does."""

    def __init__(self, host: str, port: int, scheme: str, verify: bool | str, cert: Any, *, timeout: float) -> None:
        super().__init__(host, port, scheme, verify, cert)
        self._timeout = timeout
        context: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._client = httpx.AsyncClient(verify=context)
        self._filtered_warned = False

    def _timeout_for(self, params: Params) -> float:
        params = dict(params or ())
        if "index" not in params:
            return self._timeout
        # A blocking query answers after its wait plus up to wait/16 of jitter.
        wait = _seconds(params.get("wait", "5m"))
        return self._timeout + wait + wait / 16

    async def _request(
        self,
        callback: Callback,
        method: str,
        path: str,
        params: Params,
        headers: dict[str, str] | None,
        data: str | bytes = "",
    ) -> Any:
        response = await self._client.request(
            method, self.uri(path, params), headers=headers, content=data or None, timeout=self._timeout_for(params)
        )
        if response.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true" and not self._filtered_warned:
            self._filtered_warned = True
            log.warning(
                "Consul hid results from this token: it lacks service:read or node:read",
                extra={"consul": self.base_uri, "path": path},
            )
        return callback(consul.base.Response(response.status_code, response.headers, response.text))

    def get(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Awaitable[Any]:
        return self._request(callback, "GET", path, params, headers)

    def put(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        data: str | bytes = "",
        headers: dict[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "PUT", path, params, headers, data)

    def delete(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        data: str | bytes = "",
        headers: dict[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "DELETE", path, params, headers, data)

    def post(
        self,
        callback: Callback,
        path: str,
        params: Params = None,
        data: str = "",
        headers: dict[str, str] | None = None,
    ) -> Awaitable[Any]:
        return self._request(callback, "POST", path, params, headers, data)

    def close(self) -> Awaitable[None]:
        return self._client.aclose()


class _AsyncConsul(consul.base.Consul):
    def __init__(self, *, request_timeout: float, **kwargs: Any) -> None:
        self._request_timeout = request_timeout
        super().__init__(**kwargs)

    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
    ) -> _HttpxClient:
        return _HttpxClient(host, port, scheme, verify, cert, timeout=self._request_timeout)


# -- helpers -------------------------------------------------------------------------


def _parse_address(address: str) -> tuple[str, str, int]:
    """CONSUL_HTTP_ADDR's forms (host, host:port, http(s)://host:port); without a scheme,
    CONSUL_HTTP_SSL=true means https, as for the consul CLI."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    if not parsed.hostname or parsed.scheme not in ("", "http", "https"):
        raise ValueError(f"CONSUL_HTTP_ADDR {address!r} is not host:port or http(s)://host:port")
    scheme = parsed.scheme or ("https" if os.environ.get("CONSUL_HTTP_SSL", "").lower() == "true" else "http")
    try:
        port = parsed.port or (443 if scheme == "https" else 8500)
    except ValueError as exc:
        raise ValueError(f"CONSUL_HTTP_ADDR {address!r} has an invalid port") from exc
    return scheme, parsed.hostname, port


def _ours(services: Mapping[str, list[str]] | None) -> set[str]:
    return {name for name, tags in (services or {}).items() if TAG in (tags or ())}


def _next_index(previous: str, returned: str) -> str:
    """Consul's rules for a blocking query's next index: it must be at least 1, and if it
    went backwards (a snapshot restore, a new leader) start over."""
    try:
        value = int(returned)
    except (TypeError, ValueError):
        return previous
    if previous and value < int(previous):
        return "1"
    return str(max(value, 1))


def _transient(exc: BaseException) -> bool:
    """Worth retrying: transport failures and 5xx (py-consul raises the base class for
    those); not ACL denials or bad requests."""
    return isinstance(exc, httpx.TransportError) or type(exc) in (ConsulException, Timeout)


def _log_failure(url: str, query: str, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "consul query failed; keeping the last view and retrying",
        extra={
            "consul": url,
            "query": query,
            "attempt": state.attempt_number,
            "retry_in_s": round(state.upcoming_sleep, 3),
            "error": _describe(error),
        },
    )


def _describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None and str(exc) else type(exc).__name__


def _split(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration.removesuffix(unit)) * units[unit]
    return float(duration)


def _by_name(instance: ServiceInstance) -> str:
    return instance.name
