"""Dynamic batching for calls that run in one forward pass (embeddings).

Calls wait in a bounded queue; a worker takes up to `max_batch_size` inputs, waiting at
most `max_queue_delay` after the first one for more to arrive, runs them as one batch,
and hands each call its own slice of the result. A full queue is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from infermesh_inference import metrics
from infermesh_runtime.errors import ResourceExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    items: Sequence[Any]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DynamicBatcher(Generic[T]):
    """Batches calls to `run(items) -> results` (one result per item, in order)."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[Any]], list[T]],
        executor: Executor,
        max_batch_size: int,
        max_queue_delay: float,
        max_queue_items: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.name = name
        self._run = run
        self._executor = executor
        self._max_batch = max_batch_size
        self._delay = max_queue_delay
        self._max_queued = max_queue_items
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T]] = asyncio.Queue()
        self._queued_items = 0
        self._worker: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, items: Sequence[Any]) -> list[T]:
        if self._queued_items + len(items) > self._max_queued:
            metrics.REJECTED.labels(self.name).inc()
            raise ResourceExhausted(
                f"{self.name}: {self._queued_items} inputs already queued (limit {self._max_queued}); retry shortly",
                reason="QUEUE_FULL",
                retry_after=max(self._delay, 0.05) * 4,
                model=self.name,
                queued=self._queued_items,
                limit=self._max_queued,
            )
        if self._worker is None:
            self._worker = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")
        pending: _Pending[T] = _Pending(items)
        self._queued_items += len(items)
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _collect(self) -> list[_Pending[T]]:
        batch = [await self._queue.get()]
        size = len(batch[0].items)
        deadline = asyncio.get_running_loop().time() + self._delay
        while size < self._max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if self._queue.empty() and timeout <= 0:
                break
            try:
                nxt = (
                    self._queue.get_nowait()
                    if not self._queue.empty()
                    else await asyncio.wait_for(self._queue.get(), timeout)
                )
            except TimeoutError:
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]  # callers that gave up are dropped
            self._queued_items -= sum(len(p.items) for p in batch)
            if not live:
                continue
            items = [item for p in live for item in p.items]
            self._on_batch(len(items))
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in live:
                if not p.future.done():
                    p.future.set_result(results[start : start + len(p.items)])
                start += len(p.items)
