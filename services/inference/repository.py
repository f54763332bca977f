"""The repository of named models a server holds, with each model's state and limits."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from infermesh_inference import metrics
from infermesh_inference.models.base import Capability, ServedModel
from infermesh_runtime.errors import FailedPrecondition, NotFound, Unavailable

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelEntry:
    model: ServedModel
    concurrency: asyncio.Semaphore
    state: ModelState = ModelState.LOADING
    error: str = ""
    load_seconds: float = field(default=0.0)


class ModelRepository:
    def __init__(self, models: list[ServedModel], max_concurrent: int) -> None:
        self._entries = {m.model_id: ModelEntry(m, asyncio.Semaphore(max_concurrent)) for m in models}

    def entries(self) -> list[ModelEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    def get(self, model_id: str, capability: Capability) -> ModelEntry:
        """The entry for a ready model that can do `capability`, or the error saying why not."""
        entry = self._entries.get(model_id)
        if entry is None:
            raise NotFound(
                f"model {model_id!r} is not served here; available: {', '.join(sorted(self._entries))}",
                reason="MODEL_NOT_FOUND",
                model=model_id,
            )
        if capability not in entry.model.capabilities:
            raise FailedPrecondition(
                f"model {model_id!r} does not support {capability.value}",
                reason="CAPABILITY_NOT_SUPPORTED",
                model=model_id,
                capability=capability.value,
            )
        if entry.state is not ModelState.READY:
            raise Unavailable(
                f"model {model_id!r} is {entry.state.value}, not ready", reason="MODEL_NOT_READY", model=model_id
            )
        return entry

    async def load_all(self, executor: Executor, on_change: Callable[[ModelEntry], object]) -> None:
        """Load and warm every model, one at a time; a failed model does not stop the others."""
        loop = asyncio.get_running_loop()
        for entry in self.entries():
            started = loop.time()
            try:
                await loop.run_in_executor(executor, entry.model.load)
                await loop.run_in_executor(executor, entry.model.warmup)
            except Exception as exc:  # noqa: BLE001 - recorded and reported as FAILED
                log.exception("loading %s failed", entry.model.model_id)
                entry.state, entry.error = ModelState.FAILED, str(exc)
            else:
                entry.state = ModelState.READY
                entry.load_seconds = loop.time() - started
                metrics.LOAD_SECONDS.labels(entry.model.model_id).set(entry.load_seconds)
                metrics.MODEL_MEMORY.labels(entry.model.model_id).set(entry.model.memory_bytes())
                log.info("model %s ready in %.1fs", entry.model.model_id, entry.load_seconds)
            await on_change(entry)

    def stop_all(self) -> None:
        for entry in self.entries():
            entry.model.stop()
