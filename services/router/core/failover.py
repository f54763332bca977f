"""Calling a model, and its registry fallbacks in order when it cannot answer.

A fallback is tried when the model has no deployment on a live backend, its backend
answers UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED, or does not answer (or,
streaming, send its first chunk) within `fallback_after_seconds` while a fallback is
left; and when the prompt does not fit the model's context window, to a fallback with a
larger one. Other errors (bad input, an unknown model) are the caller's to see. Fallbacks
after a backend did work and failed spend the retry budget (budget.py).

A stream fails over only until its first chunk: after that the client has part of an
answer, and a failure reaches it as a STREAM_INTERRUPTED error, never as a silent
switch to another model mid-answer or a silently truncated answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from google.rpc import code_pb2
from prometheus_client import Counter

from services.router.core.backend import RETRYABLE, code_of
from services.router.core.calls import Announce, CallContext
from services.router.core.quota import Admission
from services.router.core.resolvers import Route, model_id
from services.router.core.router import CONTEXT_TOO_LONG, RouterCore
from services.router.core.rpcs import Rpc
from services.runtime.errors import (
    DeadlineExceeded,
    DomainError,
    PermissionDenied,
    Unavailable,
    error_info,
    status_of,
)

log = logging.getLogger(__name__)
FALLBACKS = Counter(
    "infermesh_router_fallbacks_total",
    "Requests answered by a fallback, by the model asked for and the one that answered.",
    ["model", "fallback"],
)
INTERRUPTED = Counter(
    "infermesh_router_streams_interrupted_total",
    "Streams whose backend failed after the first chunk was sent, by the model that was answering.",
    ["model"],
)


@dataclass
class Answer:
    """A unary call's reply and who gave it."""

    reply: Any
    route: Route
    fallback: bool
    cached: bool
    looked_up: bool = False  # whether the response cache was asked (it may have missed)


def _permitted(models: list[str], requested: str, call: CallContext) -> list[str]:
    """The candidates the caller's credentials allow (all, for a caller the gateway
    names no models for)."""
    caller = call.caller
    if caller.models is None:
        return models
    permitted = [m for m in models if caller.may_use(model_id(m))]
    if not permitted or (not requested.startswith("auto") and not caller.may_use(model_id(requested))):
        raise PermissionDenied(
            f"these credentials may not use model {requested!r}; they may use {', '.join(sorted(caller.models))}",
            reason="MODEL_NOT_ALLOWED",
            model=requested,
        )
    return permitted


def _describe(error: BaseException) -> str:
    status = status_of(error)
    return f"{code_pb2.Code.Name(status.code)}: {status.message}"


class _Attempts:
    """One request's attempts, the model first and then its fallbacks, and what each
    outcome means: a failure that allows a fallback moves on (and counts against the
    backend's cooldown), any other is the caller's to see."""

    def __init__(self, core: RouterCore, rpc: Rpc, request: Message, call: CallContext) -> None:
        allowed = not request.routing.HasField("use_fallbacks") or request.routing.use_fallbacks
        models = _permitted(core.candidates(request.model, rpc.capability), request.model, call)
        self._core = core
        self._request = request
        self._call = call
        self._models = models if allowed else models[:1]
        self.primary = self._models[0]
        self.error: BaseException | None = None
        self.more = False  # whether the current attempt has a fallback after it
        self._backend_failed = False  # a backend did work and failed: a fallback spends budget
        self._too_long_for: int | None = None  # the context window the prompt did not fit
        self.record = core.metering.start(rpc.method, request.model)

    async def admit(self) -> Admission:
        """Take the caller's limits for the model that will answer first."""
        try:
            return await self._core.quotas.admit(self._call.caller, self.primary)
        except DomainError as error:
            self.record.failed(error)
            raise

    def __iter__(self) -> Iterator[Message]:
        for index, model in enumerate(self._models):
            if self.error is not None and not self._may_try(model):
                continue
            self.more = index < len(self._models) - 1
            attempt = type(self._request)()
            attempt.CopyFrom(self._request)
            attempt.model = model
            yield attempt

    def _may_try(self, model: str) -> bool:
        if self._too_long_for is not None:
            window = self._core.context_window(model)
            if window is not None and window <= self._too_long_for:
                return False  # a fallback with a window no larger cannot fit it either
        if (self._call.time_remaining() or 1) <= 0:
            return False
        if self._backend_failed and not self._core.budget.acquire(model_id(self._request.model)):
            return False
        log.warning(
            "falling back",
            extra={"model": self._request.model, "fallback": model, "error": _describe(self.error)},
        )
        return True

    def failed(self, error: Exception, route: Route | None) -> None:
        if (code := code_of(error)) in RETRYABLE:
            # A refusal (RESOURCE_EXHAUSTED: admission control, a rate limit) comes from a
            # backend that is up and answering: it neither opens the backend's circuit nor,
            # having cost no work, spends retry budget; nor does a routing failure.
            refused = code == code_pb2.RESOURCE_EXHAUSTED
            if route is not None and not refused:
                self._core.cooldown.failed(route.backend)
            self._backend_failed = route is not None and not refused
        elif (info := error_info(error)).reason == CONTEXT_TOO_LONG:
            # The window the prompt did not fit: the backend says; else the registry's.
            window = int(info.metadata.get("context_length") or 0) or None
            self._too_long_for = window or (self._core.context_window(route.model) if route else None)
        else:
            self.record.failed(error)
            raise error
        self.error = error

    def answered(self, attempt: Message, route: Route, cached: bool = False) -> bool:
        """Note who answered; whether that was a fallback."""
        self._core.cooldown.succeeded(route.backend)
        self._core.budget.succeeded()
        fallback = attempt.model != self.primary
        if fallback:
            # By model id, as every router series names models (versions are labels of their own).
            FALLBACKS.labels(model_id(self._request.model), model_id(attempt.model)).inc()
        self.record.answered(route, fallback, cached)
        return fallback

    def interrupted(self, error: DomainError, route: Route, sent: int) -> DomainError:
        """The error for a stream whose backend failed after `sent` chunks."""
        INTERRUPTED.labels(model_id(route.model)).inc()
        code = code_of(error)
        if code in RETRYABLE:
            self._core.cooldown.failed(route.backend)
        kind = DeadlineExceeded if code == code_pb2.DEADLINE_EXCEEDED else Unavailable
        name = code_pb2.Code.Name(code) if code is not None else "error"
        interrupted = kind(
            f"{route.model} on {route.backend} failed after {sent} chunks ({name}: {error.message}); "
            "the answer is incomplete",
            reason="STREAM_INTERRUPTED",
            model=route.model,
            backend=route.backend,
            chunks_sent=sent,
        )
        self.record.failed(interrupted)
        return interrupted

    def give_up(self) -> BaseException:
        assert self.error is not None
        self.record.failed(self.error)
        return self.error

    def close(self) -> None:
        self.record.finish()


async def unary(
    core: RouterCore, rpc: Rpc, request: Message, call: CallContext, announce: Announce | None = None
) -> Answer:
    """The first answer among the model and its fallbacks (from the response cache when
    the same deterministic request was answered recently); `reply.model` says who
    answered. `announce`, when given, is told who answered (the caller's headers) before
    this returns; a call that makes several leaves it out."""
    attempts = _Attempts(core, rpc, request, call)
    admission = Admission()
    try:
        admission = await attempts.admit()
        for attempt in attempts:
            route = None
            try:
                prepared = core.prepare(attempt, call)
                route = prepared.route
                admission.clamp(prepared.outgoing)
                key = core.cache.key(rpc, route, prepared.outgoing, call)
                if (cached := await core.cache.get(key, route)) is not None:
                    cached.model = attempt.model
                    fallback = attempts.answered(attempt, route, cached=True)
                    answer = Answer(cached, route, fallback, cached=True, looked_up=True)
                    if announce is not None:
                        await announce(answer, "hit")
                    return answer
                timeout = prepared.timeout
                if attempts.more:
                    timeout = min(timeout, core.fallback_after_seconds)
                reply = await _timed(core, attempt.model, core.send(rpc, prepared, timeout))
            except Exception as exc:
                attempts.failed(exc, route)
                continue
            answer = Answer(reply, route, attempts.answered(attempt, route), cached=False, looked_up=key is not None)
            attempts.record.usage(route, reply.usage, reply)
            await admission.charge(route.model, reply.usage)
            await core.cache.put(key, reply)
            reply.model = attempt.model
            if announce is not None:
                await announce(answer, "miss" if key else "")
            return answer
        raise attempts.give_up()
    finally:
        attempts.close()
        await admission.close()


async def stream(
    core: RouterCore,
    rpc: Rpc,
    request: Message,
    call: CallContext,
    announce: Announce | None = None,
    in_band_errors: bool = True,
) -> AsyncIterator[Any]:
    """Chunks from the first of the model and its fallbacks that starts answering
    (`announce` is told who, before the first chunk). If its backend fails after the
    first chunk, a last chunk carrying the error (`in_band_errors`; REST clients see no
    gRPC status) precedes the STREAM_INTERRUPTED error."""
    attempts = _Attempts(core, rpc, request, call)
    admission = Admission()
    try:
        admission = await attempts.admit()
        for attempt in attempts:
            route = None
            try:
                prepared = core.prepare(attempt, call)
                route = prepared.route
                admission.clamp(prepared.outgoing)
                chunks = core.open(rpc, prepared)
                first_chunk = _timed(core, attempt.model, anext(chunks))
                wait = core.fallback_after_seconds if attempts.more else None
                first = await _first_chunk(first_chunk, wait, route)
            except StopAsyncIteration:
                return
            except Exception as exc:
                attempts.failed(exc, route)
                continue
            answer = Answer(None, route, attempts.answered(attempt, route), cached=False)
            if announce is not None:
                await announce(answer, "")
            attempts.record.first_chunk()
            async for chunk in _interruptible(_prepend(first, chunks), route, attempts, in_band_errors):
                if chunk.HasField("usage"):
                    attempts.record.usage(route, chunk.usage, chunk)
                chunk.model = attempt.model
                yield chunk
                if not await admission.streamed(route.model, chunk):
                    await chunks.aclose()  # the backend stops generating
                    error = admission.spent(attempt.model)
                    attempts.record.failed(error)
                    if in_band_errors:
                        yield type(chunk)(model=attempt.model, error=error.to_status())
                    raise error
            return
        raise attempts.give_up()
    finally:
        attempts.close()
        await admission.close()


async def _first_chunk(first: Awaitable[Any], seconds: float | None, route: Route) -> Any:
    try:
        return await asyncio.wait_for(first, seconds)
    except TimeoutError:
        raise DeadlineExceeded(
            f"{route.model} on {route.backend} sent nothing within {seconds:g}s; trying its fallback",
            reason="ATTEMPT_TIMEOUT",
            model=route.model,
            backend=route.backend,
            seconds=seconds,
        ) from None


async def _interruptible(
    chunks: AsyncIterator[Any], route: Route, attempts: _Attempts, in_band: bool
) -> AsyncIterator[Any]:
    """The answer's chunks; a backend failure after some were sent becomes one clear
    error saying the answer is incomplete (also as a last chunk, when `in_band`)."""
    sent = 0
    kind = None
    try:
        async for chunk in chunks:
            kind = type(chunk)
            yield chunk
            sent += 1
    except DomainError as exc:
        error = attempts.interrupted(exc, route, sent)
        if in_band and kind is not None:
            yield kind(model=route.model, error=error.to_status())
        raise error from exc


async def _timed(core: RouterCore, model: str, call: Awaitable[Any]) -> Any:
    """Await a backend call, keeping the model's in-flight count and latency current."""
    core.load.started(model)
    started = asyncio.get_running_loop().time()
    try:
        result = await call
    except BaseException:
        core.load.finished(model, None)
        raise
    core.load.finished(model, asyncio.get_running_loop().time() - started)
    return result


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
