"""Dynamic batching for calls that run in one forward pass (embeddings).

Calls wait in a bounded queue. A collector takes the first waiting call, waits at most
`max_queue_delay` for company (or until `max_batch_size` inputs are waiting), and hands a
batch to an idle model instance, which hands each call its own slice of the result. With
several instances, a burst is shared evenly among the idle ones (64 calls and two idle
instances make two batches of 32 side by side, not one of 64 while the other waits), and
the collector gathers the next batch while the others compute. A full queue is refused at
once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.inference import metrics
from services.runtime.errors import ResourceExhausted, Unavailable
from services.runtime.telemetry import past_span

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    items: Sequence[Any]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # When it was queued, and its batch's start, end and size: its trace's spans.
    queued_ns: int = field(default_factory=time.time_ns)
    batch: tuple[int, int, int] = (0, 0, 0)


class DynamicBatcher(Generic[T]):
    """Batches calls to `run(items) -> results` (one result per item, in order) on
    `instances` threads of `executor`."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[Any]], list[T]],
        executor: Executor,
        max_batch_size: int,
        max_queue_delay: float,
        max_queue_items: int,
        on_batch: Callable[[int], None] = lambda size: None,
        instances: int = 1,
    ) -> None:
        self.name = name
        self._run = run
        self._executor = executor
        self._max_batch = max_batch_size
        self._delay = max_queue_delay
        self._max_queued = max_queue_items
        self._on_batch = on_batch
        self._instances = instances
        self._waiting: deque[_Pending[T]] = deque()
        self._arrived = asyncio.Event()
        self._queued_items = 0
        self._idle = asyncio.Semaphore(instances)
        self._busy = 0  # instances running a batch
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._computing: set[concurrent.futures.Future] = set()  # batches running in threads

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
        if self._collector is None:
            self._collector = asyncio.create_task(self._collect_forever(), name=f"batcher-{self.name}")
        pending: _Pending[T] = _Pending(items)
        self._queued_items += len(items)
        self._waiting.append(pending)
        self._arrived.set()
        try:
            return await pending.future
        finally:
            started, ended, size = pending.batch
            if started:
                past_span("queue wait", pending.queued_ns, started)
                past_span(f"{self.name} forward", started, ended, {"infermesh.batch.size": size})

    async def close(self) -> None:
        """Stop collecting, fail calls still queued or running, and wait until no batch is
        still computing in a thread (the model may be released right after)."""
        tasks = [t for t in (self._collector, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._waiting:
            self._fail(self._waiting.popleft().future)
        if self._computing:
            await asyncio.to_thread(concurrent.futures.wait, list(self._computing))

    def _fail(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(
                Unavailable(f"{self.name} is shutting down; retry", reason="MODEL_NOT_READY", model=self.name)
            )

    async def _collect_forever(self) -> None:
        while True:
            await self._idle.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._idle.release()
                raise
            self._busy += 1
            task = asyncio.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending[T]]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delay
        while self._queued_items < self._max_batch and (timeout := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                break
        idle_instances = self._instances - self._busy  # counted now: batches may have ended meanwhile
        share = min(self._max_batch, math.ceil(self._queued_items / idle_instances))
        batch, size = [], 0
        while self._waiting and (not batch or size + len(self._waiting[0].items) <= share):
            pending = self._waiting.popleft()
            batch.append(pending)
            size += len(pending.items)
        self._queued_items -= size
        return batch

    async def _run_batch(self, batch: list[_Pending[T]]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers that gave up are dropped
        try:
            if not live:
                return
            items = [item for p in live for item in p.items]
            self._on_batch(len(items))
            started = time.time_ns()
            try:
                computing = self._executor.submit(self._run, items)
                self._computing.add(computing)
                computing.add_done_callback(self._computing.discard)
                results = await asyncio.wrap_future(computing)
                for p in live:
                    p.batch = (started, time.time_ns(), len(items))
            except asyncio.CancelledError:
                for p in live:
                    self._fail(p.future)
                raise
            except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            start = 0
            for p in live:
                if not p.future.done():
                    p.future.set_result(results[start : start + len(p.items)])
                start += len(p.items)
        finally:
            self._busy -= 1
            self._idle.release()
