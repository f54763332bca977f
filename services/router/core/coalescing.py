"""Coalescing embedding calls into fewer backend calls when the mesh is busy.

While fewer than `in_flight_limit` backend calls for a model are outstanding, a request
goes out alone, at once: nothing is added to its latency while the mesh is quiet. Past
that, requests wait, and leave together as one EmbedRequest when an outstanding call
returns (Nagle's algorithm, for RPCs). Under load the per-request work of the router's
client, the Envoy hop and the backend's gRPC server is then paid once per batch, and the
backend's batcher gets bigger batches; a hosted provider gets few calls instead of many,
which is what its requests-per-minute limit counts.

Each caller gets its own vectors and its own usage (per-input token counts come back
from the backend), and keeps its own deadline: a caller whose deadline passes while it
waits leaves, and the batch goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from infermesh.inference.v1 import inference_service_pb2 as inference_pb
from infermesh.inference.v1 import inference_types_pb2 as types_pb
from infermesh.router.v1 import router_messages_pb2 as pb

log = logging.getLogger(__name__)

# Sends an EmbedRequest to a backend (by catalog name) with a timeout in seconds.
Send = Callable[[pb.EmbedRequest, str, float], Awaitable[pb.EmbedResponse]]


@dataclass
class _Waiter:
    request: pb.EmbedRequest
    deadline: float  # event loop time
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Route:
    """Calls for one model on one backend."""

    limit: int = 1
    in_flight: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)


class EmbedCoalescer:
    def __init__(self, send: Send, max_inputs: int = 2048) -> None:
        self._send = send
        self._max_inputs = max_inputs  # EmbedRequest.inputs' own limit
        self._routes: dict[tuple, _Route] = defaultdict(_Route)
        self._batches: set[asyncio.Task] = set()

    async def embed(
        self, request: pb.EmbedRequest, backend: str, timeout: float, in_flight_limit: int
    ) -> pb.EmbedResponse:
        """`request` answered by a call of its own, or by its part of a shared call once
        `in_flight_limit` calls for the same model and backend are outstanding (0: always alone)."""
        if in_flight_limit <= 0:
            return await self._send(request, backend, timeout)
        key = (request.model, backend)
        route = self._routes[key]
        route.limit = in_flight_limit
        if route.in_flight < route.limit and not route.waiting:
            route.in_flight += 1
            try:
                return await self._send(request, backend, timeout)
            finally:
                self._call_ended(key, route)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(request, loop.time() + timeout)
        route.waiting.append(waiter)
        try:
            return await waiter.future
        finally:
            waiter.future.cancel()  # a caller that left (cancelled, deadline) is skipped

    def _call_ended(self, key: tuple, route: _Route) -> None:
        route.in_flight -= 1
        while route.in_flight < route.limit and route.waiting:
            batch = self._take(route)
            if not batch:
                break
            route.in_flight += 1
            task = asyncio.create_task(self._send_batch(key, route, batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
        if not route.in_flight and not route.waiting:
            self._routes.pop(key, None)

    def _take(self, route: _Route) -> list[_Waiter]:
        batch: list[_Waiter] = []
        inputs = 0
        while route.waiting:
            waiter = route.waiting[0]
            if waiter.future.done():
                route.waiting.popleft()
                continue
            if batch and inputs + len(waiter.request.inputs) > self._max_inputs:
                break
            batch.append(route.waiting.popleft())
            inputs += len(waiter.request.inputs)
        return batch

    async def _send_batch(self, key: tuple, route: _Route, batch: list[_Waiter]) -> None:
        try:
            loop = asyncio.get_running_loop()
            request = pb.EmbedRequest(model=batch[0].request.model)
            for waiter in batch:
                request.inputs.extend(waiter.request.inputs)
            # The batch lives as long as its most patient caller; the others leave on their own deadlines.
            timeout = max(max(w.deadline for w in batch) - loop.time(), 0.001)
            try:
                response = await self._send(request, key[1], timeout)
                parts, start = [], 0
                for waiter in batch:
                    count = len(waiter.request.inputs)
                    parts.append(_slice(response, start, count))
                    start += count
            except Exception as exc:  # noqa: BLE001 - each caller gets what its own call would have
                for waiter in batch:
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)  # never left waiting, whatever failed
                return
            for waiter, part in zip(batch, parts, strict=True):
                if not waiter.future.done():
                    waiter.future.set_result(part)
        finally:
            self._call_ended(key, route)

    async def close(self) -> None:
        for task in self._batches:
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)


def _slice(response: pb.EmbedResponse, start: int, count: int) -> pb.EmbedResponse:
    """One caller's part of a coalesced response, indexed as if it had called alone."""
    embeddings = response.embeddings[start : start + count]
    tokens = sum(e.input_tokens for e in embeddings)
    return pb.EmbedResponse(
        embeddings=[
            inference_pb.Embedding(index=i, values=e.values, input_tokens=e.input_tokens)
            for i, e in enumerate(embeddings)
        ],
        usage=types_pb.Usage(input_tokens=tokens, total_tokens=tokens),
        model=response.model,
    )
