"""The repository of named models a server holds: a pool with a memory budget.

Models are known up front (their constructors are cheap) and loaded on demand: at
start-up for the preload list, on first request otherwise. When a load would exceed the
memory budget, the least recently used idle models are unloaded first; models idle for
longer than the idle timeout are unloaded too. An unload drains first: it waits for the
requests the model is serving, and a request that arrives meanwhile waits and then loads
the model again, so no request fails because its model was unloaded under it.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from services.backend.types import Capability
from services.inference import metrics
from services.inference.models.base import ServedModel
from services.runtime.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


class ModelState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class ModelEntry:
    model: ServedModel
    concurrency: asyncio.Semaphore
    state: ModelState = ModelState.UNLOADED
    error: str = ""
    load_seconds: float = 0.0
    memory_bytes: int = 0
    active: int = 0
    last_used: float = 0.0  # wall-clock seconds
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    transition: asyncio.Task | None = None  # the load or unload in progress

    def __post_init__(self) -> None:
        self.idle.set()


def _release_freed_memory() -> None:
    """Hand memory freed by an unload back to the OS; glibc keeps freed arenas otherwise."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelRepository:
    def __init__(
        self,
        models: list[ServedModel],
        executor: Executor,
        max_concurrent: int,
        memory_budget: int | None = None,
        lazy_load: bool = True,
    ) -> None:
        self._entries = {m.model_id: ModelEntry(m, asyncio.Semaphore(max_concurrent)) for m in models}
        self._executor = executor
        self._budget = memory_budget
        self._lazy = lazy_load
        self._listeners: list[Callable[[ModelEntry], Awaitable[None]]] = []
        self._unload_hooks: list[Callable[[str], Awaitable[None]]] = []

    def on_change(self, listener: Callable[[ModelEntry], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    def on_unload(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """Called before a model's weights are released, to drop what refers to them."""
        self._unload_hooks.append(hook)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    def entry(self, model_id: str) -> ModelEntry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise NotFound(
                f"model {model_id!r} is not served here; available: {', '.join(sorted(self._entries))}",
                reason="MODEL_NOT_FOUND",
                model=model_id,
            )
        return entry

    def memory_used(self) -> int:
        return sum(e.memory_bytes for e in self._entries.values())

    def capable(self, model_id: str, capability: Capability) -> ModelEntry:
        """The model's entry, if it is served here and can do `capability`."""
        entry = self.entry(model_id)
        if capability not in entry.model.capabilities:
            raise FailedPrecondition(
                f"model {model_id!r} does not support {capability.value}",
                reason="CAPABILITY_NOT_SUPPORTED",
                model=model_id,
                capability=capability.value,
            )
        return entry

    @asynccontextmanager
    async def use(self, model_id: str, capability: Capability) -> AsyncIterator[ModelEntry]:
        """A ready model for the length of one request, loading it first if need be."""
        entry = self.capable(model_id, capability)
        while entry.state is not ModelState.READY:
            if entry.state is ModelState.FAILED or not self._lazy:
                raise Unavailable(
                    f"model {model_id!r} is {entry.state.value}, not ready"
                    + (f": {entry.error}" if entry.error else ""),
                    reason="MODEL_NOT_READY",
                    model=model_id,
                )
            await self.load(model_id)
        entry.active += 1
        entry.idle.clear()
        entry.last_used = time.time()
        try:
            yield entry
        finally:
            entry.active -= 1
            entry.last_used = time.time()
            if entry.active == 0:
                entry.idle.set()

    async def load(self, model_id: str, progress: Progress = lambda stage, percent: None) -> ModelEntry:
        """Load a model (waiting for a load or unload already under way); idempotent."""
        entry = self.entry(model_id)
        while True:
            if entry.transition is not None:
                await asyncio.shield(entry.transition)
                continue
            if entry.state is ModelState.READY:
                return entry
            entry.transition = asyncio.create_task(self._load(entry, progress))
            try:
                await asyncio.shield(entry.transition)
            finally:
                entry.transition = None
            if entry.state is ModelState.FAILED:
                raise Unavailable(
                    f"model {model_id!r} failed to load: {entry.error}", reason="MODEL_LOAD_FAILED", model=model_id
                )

    async def unload(self, model_id: str, cause: str = "requested", progress: Progress = lambda s, p: None) -> None:
        entry = self.entry(model_id)
        while entry.transition is not None:
            await asyncio.shield(entry.transition)
        if entry.state in (ModelState.UNLOADED, ModelState.FAILED):
            return
        entry.transition = asyncio.create_task(self._unload(entry, cause, progress))
        try:
            await asyncio.shield(entry.transition)
        finally:
            entry.transition = None

    async def load_all(self, model_ids: list[str]) -> None:
        """Preload: one model at a time; a failed model does not stop the others."""
        for model_id in model_ids:
            try:
                await self.load(model_id)
            except Unavailable:
                log.error("preloading %s failed: %s", model_id, self.entry(model_id).error)

    async def reap_idle(self, idle_seconds: float) -> None:
        """Unload models nobody has used for `idle_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(max(0.05, min(30.0, idle_seconds / 4)))
            now = time.time()
            for entry in self.entries():
                idle_for = now - entry.last_used
                if entry.state is ModelState.READY and entry.active == 0 and idle_for > idle_seconds:
                    log.info("unloading %s after %.0fs idle", entry.model.model_id, idle_for)
                    await self.unload(entry.model.model_id, cause="idle")

    async def stop_all(self) -> None:
        for entry in self.entries():
            await self.unload(entry.model.model_id, cause="shutdown")

    async def _changed(self, entry: ModelEntry) -> None:
        for listener in self._listeners:
            await listener(entry)

    async def _load(self, entry: ModelEntry, progress: Progress) -> None:
        loop = asyncio.get_running_loop()
        model_id = entry.model.model_id
        entry.state, entry.error = ModelState.LOADING, ""
        await self._changed(entry)
        started = loop.time()
        try:
            progress("making room", 5)
            await self._make_room(entry)
            progress("loading weights", 10)
            await loop.run_in_executor(self._executor, entry.model.load)
            progress("warming up", 80)
            await loop.run_in_executor(self._executor, entry.model.warmup)
        except Exception as exc:  # noqa: BLE001 - recorded, reported as FAILED
            log.exception("loading %s failed", model_id)
            await loop.run_in_executor(self._executor, entry.model.stop)
            entry.state, entry.error = ModelState.FAILED, str(exc) or type(exc).__name__
            await self._changed(entry)
            return
        entry.load_seconds = loop.time() - started
        entry.memory_bytes = entry.model.memory_bytes()
        entry.last_used = time.time()
        entry.state = ModelState.READY
        metrics.LOAD_SECONDS.labels(model_id).set(entry.load_seconds)
        metrics.MODEL_MEMORY.labels(model_id).set(entry.memory_bytes)
        log.info("model %s ready in %.1fs (%.0f MB)", model_id, entry.load_seconds, entry.memory_bytes / 2**20)
        progress("ready", 100)
        await self._changed(entry)

    async def _make_room(self, entry: ModelEntry) -> None:
        if self._budget is None:
            return
        # An estimate may read files (safetensors headers, a GGUF assembled once): not on the loop.
        needed = await asyncio.get_running_loop().run_in_executor(self._executor, entry.model.estimate_bytes)
        while self.memory_used() + needed > self._budget:
            victims = sorted(
                (e for e in self._entries.values() if e.state is ModelState.READY and e is not entry),
                key=lambda e: e.last_used,
            )
            if not victims:
                raise ResourceExhausted(
                    f"model {entry.model.model_id!r} needs about {needed >> 20} MiB; the budget is "
                    f"{self._budget >> 20} MiB and {self.memory_used() >> 20} MiB is held by models being loaded",
                    reason="MEMORY_BUDGET_EXCEEDED",
                    model=entry.model.model_id,
                    needed_bytes=needed,
                    budget_bytes=self._budget,
                )
            log.info("evicting %s (least recently used) to make room", victims[0].model.model_id)
            await self.unload(victims[0].model.model_id, cause="evicted")

    async def _unload(self, entry: ModelEntry, cause: str, progress: Progress) -> None:
        model_id = entry.model.model_id
        entry.state = ModelState.DRAINING
        await self._changed(entry)
        progress("draining", 10)
        await entry.idle.wait()
        progress("releasing", 60)
        for hook in self._unload_hooks:
            await hook(model_id)
        await asyncio.get_running_loop().run_in_executor(self._executor, entry.model.stop)
        await asyncio.get_running_loop().run_in_executor(self._executor, _release_freed_memory)
        entry.state, entry.memory_bytes = ModelState.UNLOADED, 0
        metrics.MODEL_MEMORY.labels(model_id).set(0)
        if cause in ("evicted", "idle"):
            metrics.EVICTIONS.labels(model_id, cause).inc()
        log.info("model %s unloaded (%s)", model_id, cause)
        progress("unloaded", 100)
        await self._changed(entry)
