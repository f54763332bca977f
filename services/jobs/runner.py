"""The batch runner, transport-free: it takes the active batches oldest first and sends
each pending request through `send` (the router, on the owner's behalf), recording every
answer as it comes. It knows nothing of gRPC; the clock and sleep are injected, so its
retries, cancellation and expiry are tested on fakes.

Low priority: a batch never has more than `concurrency` requests in flight (interactive
callers keep the rest of the mesh), and an answer that says the mesh is overloaded or
restarting (429, 502-504, or no answer at all) is retried after a growing pause instead
of being recorded as the request's result.

Nothing is lost or repeated: a result is recorded the moment it arrives, in its own
durable transaction; after a crash the runner starts again from the requests with no
result (one that was in flight is sent again: its answer was never recorded, so no
caller has seen it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.jobs import batches as b
from services.jobs.store import Batch, BatchStore
from services.runtime.identity import Caller
from services.runtime.openai_errors import openai_error_body

log = logging.getLogger(__name__)
RETRYABLE = frozenset({429, 502, 503, 504})
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # about a minute: a restarting service is back by then
PAGE = 64  # pending requests read at a time


@dataclass(frozen=True)
class Answer:
    """What an HTTP client would have seen: the status, the JSON body, a request id."""

    status_code: int
    body: Any
    request_id: str = ""


class Unreachable(Exception):
    """The mesh gave no answer at all (connection refused or reset, no status)."""


Send = Callable[[Caller, str, dict[str, Any]], Awaitable[Answer]]
Observe = Callable[[str, int], None]  # (endpoint, status code) of each recorded result


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        send: Send,
        concurrency: int = 2,
        poll_seconds: float = 1.0,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        observe: Observe = lambda endpoint, status: None,
    ) -> None:
        self.store, self.send = store, send
        self.concurrency, self.poll_seconds, self.retry_delays = concurrency, poll_seconds, retry_delays
        self._sleep, self._clock, self._observe = sleep, clock, observe

    async def run(self) -> None:
        """Until cancelled: drive the active batches, then look again every poll."""
        while True:
            try:
                found = await self.run_once()
            except Exception:
                log.exception("the batch runner failed; trying again")
                found = False
            if not found:
                await self._sleep(self.poll_seconds)

    async def run_once(self) -> bool:
        """Drive each active batch as far as it goes now; whether there was one."""
        active = await self.store.active()
        for batch in active:
            await self.drive(batch)
        return bool(active)

    async def drive(self, batch: Batch) -> Batch | None:
        """Take a batch through its statuses: in progress until every request has a result
        (or it is cancelled, or expires), then its output and error files."""
        if batch.status == b.VALIDATING:
            batch = await self.store.move(batch.id, b.IN_PROGRESS, (b.VALIDATING,))
        if batch is not None and batch.status == b.IN_PROGRESS:
            await self._send_pending(batch)
            if self._expired(batch):
                await self._expire(batch)
                return await self.store.finish(batch, b.EXPIRED)
            batch = await self.store.move(batch.id, b.FINALIZING, (b.IN_PROGRESS,))
        if batch is not None and batch.status == b.FINALIZING:
            return await self.store.finish(batch, b.COMPLETED)
        if batch is not None and batch.status == b.CANCELLING:
            return await self.store.finish(batch, b.CANCELLED)
        return batch

    def _expired(self, batch: Batch) -> bool:
        return self._clock() >= batch.body["expires_at"]

    async def _send_pending(self, batch: Batch) -> None:
        """Send every pending request, `concurrency` at a time, in line order; stop early
        when the batch leaves in_progress (cancelled) or expires, checked once a poll."""
        pages = _Pages(self.store, batch.id)
        checked, running = self._clock(), True

        async def still_running() -> bool:
            nonlocal checked, running
            if running and self._clock() - checked >= self.poll_seconds:
                checked = self._clock()
                current = await self.store.batch(None, batch.id)
                running = current is not None and current.status == b.IN_PROGRESS and not self._expired(current)
            return running

        async def worker() -> None:
            while await still_running() and (item := await pages.next()) is not None:
                answer = await self._answer(batch.caller, item)
                result = b.result_line(item.custom_id, answer.request_id, answer.status_code, answer.body)
                if await self.store.record(batch.id, item.line, 200 <= answer.status_code < 300, result):
                    self._observe(item.url, answer.status_code)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _answer(self, caller: Caller, item: b.Line) -> Answer:
        """The request's answer, retried while the mesh says it is overloaded or gives
        none; the last of those when retries run out."""
        for delay in (*self.retry_delays, None):
            try:
                answer = await self.send(caller, item.url, item.body)
            except Unreachable as exc:
                answer = Answer(
                    503, openai_error_body(503, f"the mesh could not be reached: {exc}", "service_unavailable")
                )
            else:
                if answer.status_code not in RETRYABLE:
                    return answer
            if delay is not None:
                await self._sleep(delay)
        return answer

    async def _expire(self, batch: Batch) -> None:
        """Requests with no result when the window closes go to the error file."""
        message = f"this request was not sent before the batch's {b.COMPLETION_WINDOW} window closed"
        while items := await self.store.pending(batch.id, 0, PAGE):
            for item in items:
                await self.store.record(
                    batch.id, item.line, False, b.unanswered_line(item.custom_id, "batch_expired", message)
                )


class _Pages:
    """The batch's pending requests in line order, read a page at a time, shared by the
    workers (each request is handed out once)."""

    def __init__(self, store: BatchStore, batch_id: str) -> None:
        self.store, self.batch_id = store, batch_id
        self.after, self.queue, self.lock = 0, list[b.Line](), asyncio.Lock()

    async def next(self) -> b.Line | None:
        async with self.lock:
            if not self.queue:
                self.queue = await self.store.pending(self.batch_id, self.after, PAGE)
                if not self.queue:
                    return None
                self.after = self.queue[-1].line
            return self.queue.pop(0)
