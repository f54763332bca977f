"""Each caller's rate limits and token quotas, as far as only the router can see them.

Envoy's rate limit filter (gateway/ratelimit/) counts a caller's requests per minute and
refuses one whose tokens for the minute are spent. The rest needs the request's model and
its end, which only the router sees:
  - per key-and-model limits (requests, tokens, concurrent requests) under `models` in
    RATE_LIMITS, checked against the model that will answer first;
  - concurrent requests per key, held until the call ends;
  - tokens, charged as they are produced: a unary answer's usage when it arrives; a
    stream's chunks as they pass (one token per chunk until the last chunk's usage says
    exactly), sent every FLUSH_TOKENS tokens or FLUSH_SECONDS.

So that one request cannot overshoot a quota by a whole generation, `max_tokens` is
lowered to the tokens the caller has left (the answer ends with finish_reason LENGTH, as
at any max_tokens), and a stream that finds the quota spent by others meanwhile is cut
with RATE_LIMIT_EXCEEDED, in band and as its status, like an interrupted stream.

The counters are the gateway's (the same Redis, prefix and RATE_LIMITS): with
RATE_LIMIT_REDIS_URL every gateway and router replica shares them; without, each
process counts alone, exact for one gateway and one router. A caller without a principal
(auth off) is not limited.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.protobuf.message import Message

from services.limits.config import CONCURRENT, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE
from services.limits.limiter import Decision, Descriptor, RateLimiter, refusal
from services.router.core.resolvers import model_id
from services.router.core.rpcs import token_limit
from services.runtime.errors import ResourceExhausted
from services.runtime.identity import Caller

FLUSH_TOKENS = 8
FLUSH_SECONDS = 0.25
# What an unset max_tokens gets from an inference server (DEFAULT_MAX_TOKENS). A hosted
# provider's default can be longer: its streams are cut at the quota, but a unary answer
# with max_tokens unset may end past it.
UNSET_MAX_TOKENS = 256


@dataclass
class Admission:
    """One admitted call's share of its caller's limits."""

    limiter: RateLimiter | None = None
    key: str = ""
    model: str = ""
    lease: str | None = None
    remaining: int | None = None  # tokens left this window (None: no token limit)
    _streamed: int = 0  # tokens charged for the current stream
    _pending: int = 0  # counted, not yet charged
    _flushed_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    def clamp(self, request: Message) -> None:
        """Lower `max_tokens` to the tokens the caller has left (a request leaving it unset
        is taken to ask for UNSET_MAX_TOKENS)."""
        target = token_limit(request)
        if self.remaining is None or target is None:
            return
        asked = target.max_tokens if target.HasField("max_tokens") else UNSET_MAX_TOKENS
        if self.remaining < asked:
            target.max_tokens = max(1, self.remaining)

    async def charge(self, model: str, usage: Message) -> None:
        """A unary answer's tokens."""
        if self.limiter is not None:
            await self.limiter.charge_tokens(self.key, model, usage.input_tokens + usage.output_tokens)

    async def streamed(self, model: str, chunk: Message) -> bool:
        """Count a stream's chunk; False once the caller's tokens are spent."""
        if self.limiter is None:
            return True
        if chunk.HasField("usage"):  # the last chunk: the exact count
            usage = chunk.usage
            self._pending = max(0, usage.input_tokens + usage.output_tokens - self._streamed)
            await self._flush(model)
            return True
        self._pending += 1
        now = asyncio.get_running_loop().time()
        if self._pending >= FLUSH_TOKENS or now - self._flushed_at >= FLUSH_SECONDS:
            await self._flush(model)
            if self.remaining is not None:
                self.remaining = await self.limiter.remaining(self.key, model)
        return self.remaining is None or self.remaining > 0

    def spent(self, model: str) -> ResourceExhausted:
        """The error cutting a stream whose caller ran out of tokens."""
        window = self.limiter.config.window_seconds if self.limiter else 60
        return ResourceExhausted(
            f"token quota spent after {self._streamed} tokens of this answer: tokens_per_minute for {self.key} "
            f"is used up; the answer is incomplete",
            reason="RATE_LIMIT_EXCEEDED",
            retry_after=window,
            limit=TOKENS_PER_MINUTE,
            api_key=self.key,
            model=model,
            tokens_streamed=self._streamed,
        )

    async def _flush(self, model: str) -> None:
        if self._pending:
            await self.limiter.charge_tokens(self.key, model, self._pending)
            self._streamed += self._pending
            self._pending = 0
        self._flushed_at = asyncio.get_running_loop().time()

    async def close(self) -> None:
        if self.limiter is not None and self.lease:
            await self.limiter.release(self.key, self.model, self.lease)


class Quotas:
    """Admits calls against their caller's limits (nothing, without a limiter)."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        self.limiter = limiter

    async def admit(self, caller: Caller, model: str) -> Admission:
        """Check and take the caller's per-model and concurrency limits for a call to
        `model` (its id, without version); raise RATE_LIMIT_EXCEEDED when one refuses."""
        key = caller.principal
        if self.limiter is None or not key:
            return Admission()
        model = model_id(model)
        descriptors = [
            Descriptor({"kind": TOKENS_PER_MINUTE, "api_key": key}),
            Descriptor({"kind": CONCURRENT, "api_key": key}),
            Descriptor({"kind": TOKENS_PER_MINUTE, "api_key": key, "model": model}),
            Descriptor({"kind": REQUESTS_PER_MINUTE, "api_key": key, "model": model}),
            Descriptor({"kind": CONCURRENT, "api_key": key, "model": model}),
        ]
        decision: Decision = await self.limiter.check(descriptors)
        if not decision.allowed:
            raise refusal(decision.binding, self.limiter.config.window_seconds)
        # The tokens-per-minute checks just read what is left: no second trip to the store.
        left = [s.remaining for s in decision.statuses if s.kind == TOKENS_PER_MINUTE and s.remaining is not None]
        return Admission(self.limiter, key, model, decision.lease, min(left, default=None))

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()
