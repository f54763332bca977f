"""The service catalog: which service instances exist, where, and which models they
have ready.

Every service registers itself on start (the runtime kit does it), updates its entry
when its models' readiness changes, and deregisters on graceful shutdown. Readers (the
router, Envoy's control plane) see the current instances and follow changes. Two
implementations share the `Catalog` interface, and nothing else knows which is in use:

- `EmbeddedCatalog` (no CONSUL_HTTP_ADDR; what `make run` and the tests use): a
  directory with one YAML file per instance, written atomically by the instance
  itself, plus optional fixed entries (a deployment whose services don't register,
  such as the compose file's static view).
- `ConsulCatalog` (services/runtime/consul_catalog.py): Consul's agent API, with a
  gRPC health check per instance; readers see only instances whose checks pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import yaml

# The header naming the backend (catalog instance or model pool: an Envoy cluster) a
# mesh call is for.
BACKEND_HEADER = "x-infermesh-backend"
POLL_SECONDS = 0.25
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it
# Kinds whose replicas form per-model pools in Envoy: the router names the pool
# (`inference/gemma-3-270m`) and Envoy balances among the replicas with that model ready.
POOL_KINDS = ("inference",)


def pool_name(kind: str, model: str) -> str:
    return f"{kind}/{model}"


def model_health_service(service: str, model: str) -> str:
    """The gRPC health service that says whether `service` is ready for `model`
    (`infermesh.inference.v1.InferenceService/gemma-3-270m`: loaded on that inference
    server; `infermesh.router.v1.RouterService/<model>`: routable by that router)."""
    return f"{service}/{model}"


@dataclass(frozen=True)
class ServiceInstance:
    name: str  # unique: also the Envoy cluster name, e.g. "inference-0"
    kind: str  # "router", "inference", "provider" or "registry"
    host: str
    port: int
    models: tuple[str, ...] = field(default=())  # models ready to serve now
    capabilities: tuple[str, ...] = field(default=())
    version: str = ""  # the software's version

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "models": list(self.models),
            "capabilities": list(self.capabilities),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, item: dict) -> ServiceInstance:
        return cls(
            name=item["name"],
            kind=item["kind"],
            host=item["host"],
            port=int(item["port"]),
            models=tuple(item.get("models") or ()),
            capabilities=tuple(item.get("capabilities") or ()),
            version=str(item.get("version") or ""),
        )

    def with_models(self, models: Iterable[str]) -> ServiceInstance:
        return replace(self, models=tuple(sorted(models)))


class Catalog(Protocol):
    def instances(self, kind: str | None = None) -> list[ServiceInstance]:
        """The instances known now (healthy ones, where the catalog checks health)."""

    async def start(self) -> None:
        """Load the current view and begin following changes."""

    async def close(self) -> None: ...

    async def register(self, instance: ServiceInstance) -> None:
        """Add this instance, or replace its entry (same name) with this one."""

    async def deregister(self, instance: ServiceInstance) -> None: ...

    def watch(self) -> AsyncIterator[list[ServiceInstance]]:
        """The whole view now, then again after every change."""


class EmbeddedCatalog:
    """Instances as YAML files in `directory` (one per instance) plus `fixed` ones."""

    def __init__(self, directory: Path | None = None, fixed: Iterable[ServiceInstance] = ()) -> None:
        self._directory = directory
        self._fixed = list(fixed)
        self._parsed: dict[Path, tuple[tuple[int, int, int], dict]] = {}  # path: (signature, entry)
        self._view: list[ServiceInstance] = self._read()
        self._changed: asyncio.Condition | None = None  # made on the loop that uses it
        self._follower: asyncio.Task | None = None
        self._version = 0

    # -- reading -------------------------------------------------------------------

    def instances(self, kind: str | None = None) -> list[ServiceInstance]:
        return [s for s in self._view if kind is None or s.kind == kind]

    def _read(self) -> list[ServiceInstance]:
        found = {s.name: s for s in self._fixed}
        if self._directory is not None and self._directory.is_dir():
            seen: dict[Path, tuple[tuple[int, int, int], dict]] = {}
            for path in sorted(self._directory.glob("*.yaml")):
                with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
                    item = self._parse(path, seen)
                    if not _alive(item.get("pid")):
                        continue  # killed without deregistering (kill -9): gone
                    instance = ServiceInstance.from_dict(item)
                    found[instance.name] = instance
            self._parsed = seen
        return list(found.values())

    def _parse(self, path: Path, seen: dict[Path, tuple[tuple[int, int, int], dict]]) -> dict:
        """A file's entry, parsed again only when the file changed: every process polls
        the directory 4 times a second, and parsing every file each time cost each of
        them a steady share of a core (entries are replaced, never edited in place, so
        a changed entry has a new inode, size or mtime)."""
        stat = path.stat()
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == signature:
            item = cached[1]
        else:
            item = yaml.load(path.read_text(), Loader=_LOADER)
        seen[path] = (signature, item)
        return item

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        self._view = self._read()
        if self._directory is not None and self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="catalog-follower")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            view = self._read()
            if view != self._view:
                await self._publish(view)

    async def _publish(self, view: list[ServiceInstance]) -> None:
        self._view = view
        self._version += 1
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def watch(self) -> AsyncIterator[list[ServiceInstance]]:
        if self._changed is None:
            self._changed = asyncio.Condition()
        seen = -1
        while True:
            if seen != self._version:
                seen = self._version
                yield list(self._view)
            async with self._changed:
                await self._changed.wait_for(lambda seen=seen: seen != self._version)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None

    # -- registering ---------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        if self._directory is None:
            raise RuntimeError("this embedded catalog has no directory to register in")
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / f"{instance.name}.yaml"
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        # The owner's PID: the embedded catalog is one machine's, so a reader can tell an
        # instance that died without deregistering (what Consul's health check tells).
        temporary.write_text(yaml.safe_dump({**instance.to_dict(), "pid": os.getpid()}, sort_keys=False))
        temporary.replace(path)  # atomic: readers see the old entry or the new one
        await self._publish(self._read())

    async def deregister(self, instance: ServiceInstance) -> None:
        if self._directory is not None:
            (self._directory / f"{instance.name}.yaml").unlink(missing_ok=True)
            await self._publish(self._read())

    # -- files ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> EmbeddedCatalog:
        """Fixed entries from a YAML file (`services: [...]`)."""
        data = yaml.safe_load(path.read_text()) or {}
        return cls(fixed=[ServiceInstance.from_dict(item) for item in data.get("services", [])])

    @classmethod
    def of(cls, services: Iterable[ServiceInstance]) -> EmbeddedCatalog:
        """Fixed entries given in code (tests, the launcher's plan)."""
        return cls(fixed=services)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # written by hand or by a tool: trusted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_instance_name(kind: str, port: int) -> str:
    """A name unique in the mesh when none is configured: kind, host name and port."""
    return f"{kind}-{socket.gethostname()}-{port}"
