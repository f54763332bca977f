"""The edge between gRPC and the router's core: a call read into a CallContext once,
and the core's answers told back as response headers."""

from __future__ import annotations

import time
from contextvars import ContextVar

import grpc

from services.router.core.calls import Announce, CallContext
from services.router.core.failover import Answer
from services.runtime.identity import Caller

# The caller the router's own check established (authorization.py), for the call's task.
CALLER: ContextVar[Caller | None] = ContextVar("caller", default=None)
# `cache-control: no-cache` (an HTTP header, or gRPC metadata) asks for a fresh answer.
OPT_OUT = {"no-cache", "no-store"}


def call_context(context: grpc.aio.ServicerContext) -> CallContext:
    metadata = context.invocation_metadata() or ()
    opt_out = any(
        key == "cache-control" and OPT_OUT & {part.strip() for part in str(value).lower().split(",")}
        for key, value in metadata
    )
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None else None
    # The caller the router's own check established (authorization.py), else the one the
    # gateway named in headers (anonymous with authorization off).
    caller = CALLER.get() or Caller.from_headers(metadata)
    return CallContext(caller, opt_out, deadline)


def announcer(context: grpc.aio.ServicerContext) -> Announce:
    """Response headers (gRPC initial metadata; HTTP headers through Envoy) saying which
    model, version and backend answered, whether that was a fallback, and the cache."""

    async def announce(answer: Answer, cache: str) -> None:
        metadata = [
            ("x-infermesh-model", answer.route.model),
            ("x-infermesh-version", answer.route.version),
            ("x-infermesh-served-by", answer.route.backend),
            ("x-infermesh-fallback", "true" if answer.fallback else "false"),
            ("x-infermesh-cache", cache),
        ]
        await context.send_initial_metadata([(key, value) for key, value in metadata if value])

    return announce
