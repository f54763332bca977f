"""Calling a model, and its registry fallbacks in order when it cannot answer.

A fallback is tried when the model has no deployment on a live backend or its backend
answers UNAVAILABLE or RESOURCE_EXHAUSTED; other errors (bad input, an unknown model)
are the caller's to see. A stream fails over only until its first chunk: after that the
client has part of an answer, and a failure reaches it as an error, never as a silent
switch to another model mid-answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

from infermesh_router.backends import Backends, relay
from infermesh_router.directory import Route
from infermesh_router.metering import meter
from infermesh_runtime.errors import DomainError

log = logging.getLogger(__name__)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
FALLBACKS = Counter(
    "infermesh_router_fallbacks_total",
    "Requests answered by a fallback, by the model asked for and the one that answered.",
    ["model", "fallback"],
)

Send = Callable[[Message, dict], Awaitable[Any]]
Open = Callable[[Message, dict], grpc.aio.UnaryStreamCall]


def can_fall_back(error: BaseException) -> bool:
    if isinstance(error, DomainError):
        return error.code in RETRYABLE
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in RETRYABLE
    return False


CAPABILITY = {
    "GenerateText": "text-generation",
    "Chat": "chat",
    "Embed": "embedding",
    "DescribeImage": "image-description",
}


class _Attempts:
    """One request's attempts, the model first and then its fallbacks, and what each
    outcome means: a failure that allows a fallback moves on (and counts against the
    backend's cooldown), any other is the caller's to see."""

    def __init__(self, backends: Backends, rpc: str, request: Message) -> None:
        allowed = not request.HasField("use_fallbacks") or request.use_fallbacks
        models = backends.candidates(request.model, CAPABILITY[rpc])
        self._backends = backends
        self._request = request
        self._models = models if allowed else models[:1]
        self.primary = self._models[0]
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Message]:
        for model in self._models:
            if self.error is not None:
                log.warning(
                    "falling back",
                    extra={"model": self._request.model, "fallback": model, "error": type(self.error).__name__},
                )
            attempt = type(self._request)()
            attempt.CopyFrom(self._request)
            attempt.model = model
            yield attempt

    def failed(self, error: Exception, route: Route | None) -> None:
        if not can_fall_back(error):
            raise error
        if route is not None:  # the backend failed, not the routing
            self._backends.cooldown.failed(route.backend)
        self.error = error

    def answered(self, attempt: Message, route: Route) -> None:
        self._backends.cooldown.succeeded(route.backend)
        if attempt.model != self.primary:
            FALLBACKS.labels(self._request.model, attempt.model).inc()

    def give_up(self) -> BaseException:
        assert self.error is not None
        return self.error


async def _announce(context, primary: str, attempt: Message, route: Route, cache: str = "") -> None:
    """Response headers (gRPC initial metadata; HTTP headers through Envoy) saying which
    model, version and backend answered and whether that was a fallback."""
    if context is None:
        return
    metadata = [
        ("x-infermesh-model", route.model),
        ("x-infermesh-version", route.version),
        ("x-infermesh-served-by", route.backend),
        ("x-infermesh-fallback", "true" if attempt.model != primary else "false"),
        ("x-infermesh-cache", cache),
    ]
    await context.send_initial_metadata([(key, value) for key, value in metadata if value])


async def unary(backends: Backends, rpc: str, send: Send, request: Message, context) -> tuple[Any, Route]:
    """The first answer among the model and its fallbacks (from the response cache when
    the same deterministic request was answered recently); `reply.model` says who answered."""
    attempts = _Attempts(backends, rpc, request)
    for attempt in attempts:
        route = None
        try:
            outgoing, options, route = backends.prepare(attempt, context)
            key = backends.cache.key(rpc, route, outgoing, context)
            if (cached := backends.cache.get(key, route)) is not None:
                cached.model = attempt.model
                await _announce(context, attempts.primary, attempt, route, cache="hit")
                return cached, route
            reply = await _timed(backends, attempt.model, send(outgoing, options))
        except Exception as exc:
            attempts.failed(exc, route)
            continue
        attempts.answered(attempt, route)
        meter(route, reply.usage)
        backends.cache.put(key, reply)
        reply.model = attempt.model
        await _announce(context, attempts.primary, attempt, route, cache="miss" if key else "")
        return reply, route
    raise attempts.give_up()


async def stream(backends: Backends, rpc: str, open_call: Open, request: Message, context) -> AsyncIterator[Any]:
    """Chunks from the first of the model and its fallbacks that starts answering."""
    attempts = _Attempts(backends, rpc, request)
    for attempt in attempts:
        route = None
        try:
            outgoing, options, route = backends.prepare(attempt, context)
            chunks = relay(open_call(outgoing, options))
            first = await _timed(backends, attempt.model, anext(chunks))
        except StopAsyncIteration:
            return
        except Exception as exc:
            attempts.failed(exc, route)
            continue
        attempts.answered(attempt, route)
        await _announce(context, attempts.primary, attempt, route)
        async for chunk in _prepend(first, chunks):
            if chunk.HasField("usage"):
                meter(route, chunk.usage)
            chunk.model = attempt.model
            yield chunk
        return
    raise attempts.give_up()


async def _timed(backends: Backends, model: str, call: Awaitable[Any]) -> Any:
    """Await a backend call, keeping the model's in-flight count and latency current."""
    backends.load.started(model)
    started = time.monotonic()
    try:
        result = await call
    except BaseException:
        backends.load.finished(model, None)
        raise
    backends.load.finished(model, time.monotonic() - started)
    return result


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
