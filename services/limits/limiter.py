"""The limiter the mesh counts with: requests per minute, tokens per minute and concurrent
requests, per caller and per caller-and-model (configuration: config.py). Envoy's rate
limit service (gateway/ratelimit/) checks with it on every request; the router charges
tokens and holds concurrency slots with it (services/router/core/quota.py). Both count in
the same store, so limits hold across every replica of either.

State. With a Redis URL every counter lives in Redis and each check is one Lua script (atomic,
timed by Redis's clock), so any number of gateway replicas, and the router, share one count.
Without one, `MemoryStore` keeps the same counters in this process: one replica only.
  - Requests and tokens per minute: a sliding window of 60 sub-windows (one second each for
    a minute), so no minute holds more than the limit, give or take one sub-window; a
    refused request is not counted.
  - Tokens are charged by the router as they are produced (`RateLimiter.charge_tokens`,
    streams included). A `tokens_per_minute` descriptor only checks: it refuses a request
    once the window's tokens are spent. A generation that started in time can overshoot
    by the tokens charged between two checks; the router bounds that with `remaining()`,
    cutting a stream short when it reaches 0.
  - Concurrency: RLS has no "release" call, so a request that passes takes a lease, a
    member of a Redis sorted set scored by its expiry (`lease_seconds`). Envoy forwards its
    id to the router in `x-infermesh-ratelimit-lease`; the router calls `release()` when the
    request ends. A lease nobody releases (a crashed router) expires by itself.
  - A request refused by any of its limits keeps no lease and spends no requests: what
    its other descriptors took is given back.

Failure: when Redis is unreachable every call fails open (OK, no limits), logs an error
(at most every 10 s) and counts `infermesh_ratelimit_store_errors_total`: an outage of the
limiter must not become an outage of the mesh.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import quote

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.limits.config import CONCURRENT, KINDS, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, LimitConfig, Limits
from services.runtime.errors import ResourceExhausted

log = logging.getLogger(__name__)
DECISIONS = Counter(
    "infermesh_ratelimit_decisions_total", "Rate limit checks, by limit and outcome.", ["kind", "outcome"]
)
STORE_ERRORS = Counter(
    "infermesh_ratelimit_store_errors_total",
    "Rate limit store failures, each answered as if no limit applied (fail open).",
    ["operation"],
)
LEASE_HEADER = "x-infermesh-ratelimit-lease"
SUB_WINDOWS = 60
DEFAULT_PREFIX = "infermesh:ratelimit:"


class StoreUnavailable(Exception):
    """The shared counters cannot be read or written."""


@dataclass(frozen=True)
class Window:
    allowed: bool
    used: int
    wait_ms: int  # until a refused request would fit
    reset_ms: int  # until the oldest counted unit leaves the window
    sub: int = -1  # the sub-window it was counted in (-1: not counted)


@dataclass(frozen=True)
class Slots:
    allowed: bool
    held: int


class Store(Protocol):
    async def take(self, counter: str, limit: int, cost: int, window_ms: int, consume: bool) -> Window:
        """Does `cost` more fit under `limit` in the window? If so and `consume`, count it."""

    async def give_back(self, counter: str, sub: int, units: int) -> None:
        """Uncount what `take` counted in sub-window `sub` (nothing once it has left)."""

    async def charge(self, counters: Sequence[str], units: int, window_ms: int) -> None:
        """Count `units` in each window, whatever the limit."""

    async def acquire(self, counter: str, limit: int, lease: str, ttl_ms: int) -> Slots: ...

    async def release(self, counters: Sequence[str], lease: str) -> None: ...

    async def close(self) -> None: ...


# A window is a hash {sub-window index: units}; `live` drops the sub-windows that left it.
_LUA_PROLOGUE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(key, now, window, subs)
  local width = window / subs
  local current = math.floor(now / width)
  local raw = redis.call('HGETALL', key)
  local entries, used, stale = {}, 0, {}
  for i = 1, #raw, 2 do
    local index, units = tonumber(raw[i]), tonumber(raw[i + 1])
    if index <= current - subs then
      stale[#stale + 1] = raw[i]
    else
      entries[#entries + 1] = {index, units}
      used = used + units
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  return entries, used, current, width
end
"""
_TAKE = (
    _LUA_PROLOGUE
    + """
local window, subs = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, cost, consume = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local now = now_ms()
local entries, used, current, width = live(KEYS[1], now, window, subs)
local allowed = used + cost <= limit
local sub = '-1'
if allowed and consume then
  sub = string.format('%.0f', current)
  redis.call('HINCRBY', KEYS[1], sub, cost)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window + width))
  used = used + cost
  if #entries == 0 then entries[1] = {current, cost} end
end
local wait = 0
if not allowed then
  wait = window
  local excess, freed = used + cost - limit, 0
  for _, entry in ipairs(entries) do
    freed = freed + entry[2]
    if freed >= excess then
      wait = (entry[1] + subs) * width - now
      break
    end
  end
end
local reset = window
if #entries > 0 then reset = (entries[1][1] + subs) * width - now end
return {allowed and 1 or 0, used, math.ceil(wait), math.ceil(reset), sub}
"""
)
_CHARGE = (
    _LUA_PROLOGUE
    + """
local window, subs, units = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
for _, key in ipairs(KEYS) do
  local _, _, current, width = live(key, now, window, subs)
  redis.call('HINCRBY', key, string.format('%.0f', current), units)
  redis.call('PEXPIRE', key, math.ceil(window + width))
end
return 0
"""
)
_GIVE_BACK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2])) end
return 0
"""
# Concurrency: a sorted set {lease id: expiry in ms}.
_ACQUIRE = """
local limit, lease, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= limit then return {0, held} end
redis.call('ZADD', KEYS[1], now + ttl, lease)
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, held + 1}
"""


class RedisStore:
    """Counters in Redis, shared by every replica and the router. Short timeouts: a slow
    Redis must not hold up every request behind Envoy's rate limit timeout."""

    def __init__(self, url: str, timeout_seconds: float = 0.25) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1),  # once, for a pooled connection Redis has closed
        )
        self._take = self._redis.register_script(_TAKE)
        self._charge = self._redis.register_script(_CHARGE)
        self._give_back = self._redis.register_script(_GIVE_BACK)
        self._acquire = self._redis.register_script(_ACQUIRE)

    async def take(self, counter: str, limit: int, cost: int, window_ms: int, consume: bool) -> Window:
        allowed, used, wait, reset, sub = await self._call(
            self._take, [counter], [window_ms, SUB_WINDOWS, limit, cost, int(consume)]
        )
        return Window(bool(allowed), int(used), int(wait), int(reset), int(sub))

    async def give_back(self, counter: str, sub: int, units: int) -> None:
        await self._call(self._give_back, [counter], [sub, units])

    async def charge(self, counters: Sequence[str], units: int, window_ms: int) -> None:
        await self._call(self._charge, list(counters), [window_ms, SUB_WINDOWS, units])

    async def acquire(self, counter: str, limit: int, lease: str, ttl_ms: int) -> Slots:
        allowed, held = await self._call(self._acquire, [counter], [limit, lease, ttl_ms])
        return Slots(bool(allowed), int(held))

    async def release(self, counters: Sequence[str], lease: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for counter in counters:
                    pipe.zrem(counter, lease)
                await pipe.execute()
        except (aioredis.RedisError, OSError) as error:
            raise StoreUnavailable(str(error)) from error

    async def _call(self, script, keys: list[str], args: list[object]) -> list:
        try:
            return await script(keys=keys, args=args)
        except (aioredis.RedisError, OSError) as error:
            raise StoreUnavailable(str(error)) from error

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryStore:
    """The same counters in this process: for one gateway replica, with the router in the
    same process or not limiting tokens. Several replicas each get the full limit."""

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def _live(self, counter: str, now: float, window_ms: int) -> tuple[dict[int, int], int, float]:
        width = window_ms / SUB_WINDOWS
        current = math.floor(now / width)
        subs = {i: n for i, n in self._windows.get(counter, {}).items() if i > current - SUB_WINDOWS}
        self._windows[counter] = subs
        return subs, current, width

    async def take(self, counter: str, limit: int, cost: int, window_ms: int, consume: bool) -> Window:
        now = time.monotonic() * 1000
        subs, current, width = self._live(counter, now, window_ms)
        used = sum(subs.values())
        allowed, taken = used + cost <= limit, -1
        if allowed and consume:
            subs[current] = subs.get(current, 0) + cost
            used, taken = used + cost, current
        wait = 0.0
        if not allowed:
            wait, excess, freed = window_ms, used + cost - limit, 0
            for index in sorted(subs):
                freed += subs[index]
                if freed >= excess:
                    wait = (index + SUB_WINDOWS) * width - now
                    break
        reset = (min(subs) + SUB_WINDOWS) * width - now if subs else window_ms
        if not subs:
            del self._windows[counter]
        return Window(allowed, used, math.ceil(wait), math.ceil(reset), taken)

    async def give_back(self, counter: str, sub: int, units: int) -> None:
        subs = self._windows.get(counter, {})
        if sub in subs:
            subs[sub] -= units

    async def charge(self, counters: Sequence[str], units: int, window_ms: int) -> None:
        now = time.monotonic() * 1000
        for counter in counters:
            subs, current, _ = self._live(counter, now, window_ms)
            subs[current] = subs.get(current, 0) + units

    async def acquire(self, counter: str, limit: int, lease: str, ttl_ms: int) -> Slots:
        now = time.monotonic() * 1000
        leases = {k: expiry for k, expiry in self._leases.get(counter, {}).items() if expiry > now}
        self._leases[counter] = leases
        if len(leases) >= limit:
            return Slots(False, len(leases))
        leases[lease] = now + ttl_ms
        return Slots(True, len(leases))

    async def release(self, counters: Sequence[str], lease: str) -> None:
        for counter in counters:
            self._leases.get(counter, {}).pop(lease, None)

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class Descriptor:
    entries: Mapping[str, str]
    hits: int = 1  # 0: check whether one more request fits, counting nothing


@dataclass(frozen=True)
class Status:
    kind: str | None  # None: no limit applies to this descriptor
    allowed: bool = True
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None
    retry_after_seconds: float | None = None
    api_key: str = ""
    model: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    statuses: list[Status]
    lease: str | None = None  # a concurrency lease, for the router to release
    degraded: bool = False  # the store failed: answered without limits

    @property
    def binding(self) -> Status | None:
        """The limit the answer is about: the refusal with the longest wait, else the limit
        closest (as a fraction) to running out."""
        refused = [s for s in self.statuses if not s.allowed]
        if refused:
            return max(refused, key=lambda s: s.retry_after_seconds or 0)
        limited = [s for s in self.statuses if s.limit is not None and s.remaining is not None]
        return min(limited, key=lambda s: s.remaining / max(s.limit, 1), default=None)


@dataclass(frozen=True)
class _Plan:
    kind: str
    api_key: str
    model: str
    limit: int
    hits: int


@dataclass
class _Spent:
    """What one check took so far: its lease (held in `leases`) and its counts."""

    lease: str
    leases: list[str] = field(default_factory=list)
    counts: list[tuple[int, str, int, int]] = field(default_factory=list)  # descriptor, counter, sub, cost


_ORDER = {TOKENS_PER_MINUTE: 0, CONCURRENT: 1, REQUESTS_PER_MINUTE: 2}


class RateLimiter:
    """The limits over a store. Both the gateway's servicer and the router use this; given
    the same Redis URL, prefix and configuration, they share every count."""

    def __init__(self, config: LimitConfig, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.config = config
        self._store = store
        self._prefix = prefix
        self._window_ms = max(1, round(config.window_seconds * 1000))
        self._lease_ms = max(1, round(config.lease_seconds * 1000))
        self._last_logged = -math.inf

    async def check(self, descriptors: Sequence[Descriptor]) -> Decision:
        """Check one request's descriptors, counting it only when every limit passes."""
        plans = [self._plan(d) for d in descriptors]
        statuses: list[Status] = [Status(None) for _ in plans]
        spent = _Spent(uuid.uuid4().hex)
        refused = False
        order = sorted((i for i, p in enumerate(plans) if p is not None), key=lambda i: _ORDER[plans[i].kind])
        try:
            for i in order:
                statuses[i] = await self._check_one(plans[i], spent, i, count=not refused)
                refused = refused or not statuses[i].allowed
            if refused:
                for i, _, _, cost in spent.counts:
                    statuses[i] = replace(statuses[i], remaining=min(plans[i].limit, statuses[i].remaining + cost))
                await self._undo(spent)
        except StoreUnavailable as error:
            self._failed("check", error)
            try:
                await self._undo(spent)
            except StoreUnavailable:
                pass  # leases expire by themselves
            return Decision(True, [Status(None) for _ in plans], degraded=True)
        for status in statuses:
            if status.kind is not None:
                DECISIONS.labels(status.kind, "ok" if status.allowed else "over_limit").inc()
        return Decision(not refused, statuses, spent.lease if spent.leases and not refused else None)

    async def charge_tokens(self, key: str, model: str, tokens: int) -> None:
        """Count tokens a request produced (or consumed) against its tokens-per-minute
        windows; call it as they stream. Never raises for a store outage."""
        counters = [self._counter(TOKENS_PER_MINUTE, key, m) for m in self._token_scopes(key, model)]
        if tokens <= 0 or not counters:
            return
        try:
            await self._store.charge(counters, tokens, self._window_ms)
        except StoreUnavailable as error:
            self._failed("charge_tokens", error)

    async def remaining(self, key: str, model: str) -> int | None:
        """Tokens the caller may still use on `model` this window (the tightest of its
        limits); None when no token limit applies or the store cannot say."""
        left: list[int] = []
        try:
            for scope in self._token_scopes(key, model):
                limit = self._limits(key, scope).tokens_per_minute
                counter = self._counter(TOKENS_PER_MINUTE, key, scope)
                window = await self._store.take(counter, limit, 0, self._window_ms, consume=False)
                left.append(max(0, limit - window.used))
        except StoreUnavailable as error:
            self._failed("remaining", error)
            return None
        return min(left, default=None)

    async def release(self, key: str, model: str, lease: str) -> None:
        """End a request's concurrency lease (from `x-infermesh-ratelimit-lease`)."""
        if not lease:
            return
        counters = [self._counter(CONCURRENT, key, ""), self._counter(CONCURRENT, key, model)]
        try:
            await self._store.release(counters, lease)
        except StoreUnavailable as error:
            self._failed("release", error)

    async def close(self) -> None:
        await self._store.close()

    def _plan(self, descriptor: Descriptor) -> _Plan | None:
        entries = descriptor.entries
        kind, key, model = entries.get("kind", ""), entries.get("api_key", ""), entries.get("model", "")
        if kind not in KINDS or not key:
            return None
        limits = self._limits(key, model)
        limit = None if limits is None else limits.of(kind)
        return None if limit is None else _Plan(kind, key, model, limit, max(descriptor.hits, 0))

    async def _check_one(self, plan: _Plan, spent: _Spent, index: int, count: bool) -> Status:
        counter = self._counter(plan.kind, plan.api_key, plan.model)
        base = {"kind": plan.kind, "limit": plan.limit, "api_key": plan.api_key, "model": plan.model}
        if plan.kind == CONCURRENT:  # taken even after a refusal: `check` gives it back
            slots = await self._store.acquire(counter, plan.limit, spent.lease, self._lease_ms)
            if slots.allowed:
                spent.leases.append(counter)
            return Status(
                allowed=slots.allowed,
                remaining=max(0, plan.limit - slots.held),
                retry_after_seconds=None if slots.allowed else 1.0,
                **base,
            )
        # Tokens only check for one more; requests count their hits while all limits pass.
        requests = plan.kind == REQUESTS_PER_MINUTE and plan.hits > 0
        cost = plan.hits if requests else 1
        window = await self._store.take(counter, plan.limit, cost, self._window_ms, consume=count and requests)
        if window.sub >= 0:
            spent.counts.append((index, counter, window.sub, cost))
        return Status(
            allowed=window.allowed,
            remaining=max(0, plan.limit - window.used),
            reset_seconds=window.reset_ms / 1000,
            retry_after_seconds=None if window.allowed else window.wait_ms / 1000,
            **base,
        )

    async def _undo(self, spent: _Spent) -> None:
        """Give back what a refused request took."""
        for _, counter, sub, cost in spent.counts:
            await self._store.give_back(counter, sub, cost)
        if spent.leases:
            await self._store.release(spent.leases, spent.lease)
        spent.counts.clear()
        spent.leases.clear()

    def _limits(self, key: str, model: str) -> Limits | None:
        return self.config.for_model(model) if model else self.config.for_key(key)

    def _token_scopes(self, key: str, model: str) -> list[str]:
        """The scopes ("" for the key alone) whose tokens-per-minute limit a call counts in."""
        scopes = [""] if self.config.for_key(key).tokens_per_minute is not None else []
        limits = self.config.for_model(model) if model else None
        if limits is not None and limits.tokens_per_minute is not None:
            scopes.append(model)
        return scopes

    def _counter(self, kind: str, key: str, model: str) -> str:
        # The key in braces: a Redis Cluster keeps all of one caller's counters in one slot.
        counter = f"{self._prefix}{{{quote(key, safe='')}}}:{kind}"
        return f"{counter}:{quote(model, safe='')}" if model else counter

    def _failed(self, operation: str, error: Exception) -> None:
        STORE_ERRORS.labels(operation).inc()
        now = time.monotonic()
        if now - self._last_logged >= 10:
            self._last_logged = now
            log.error("rate limit store unavailable (%s), failing open: %s", operation, error)


def open_limiter(config: LimitConfig, redis_url: str | None, prefix: str = DEFAULT_PREFIX) -> RateLimiter:
    """Counters in Redis when a URL is given (shared by all replicas), else in memory."""
    return RateLimiter(config, RedisStore(redis_url) if redis_url else MemoryStore(), prefix)


def limit_headers(status: Status) -> dict[str, str]:
    """The response headers that tell a caller about a limit: which one
    (`x-infermesh-ratelimit`), its size, what is left and when it resets."""
    headers = {
        "x-infermesh-ratelimit": status.kind or "",
        "x-ratelimit-limit": str(status.limit),
        "x-ratelimit-remaining": str(status.remaining),
    }
    if status.reset_seconds is not None:
        headers["x-ratelimit-reset"] = str(math.ceil(status.reset_seconds))
    return headers


def refusal(status: Status, window_seconds: float) -> ResourceExhausted:
    """The error for a limit that refused: which limit, for whom, and when to come back
    (also as response headers)."""
    retry_after = max(1, math.ceil(status.retry_after_seconds or 1))
    scope = f"{status.api_key} on {status.model}" if status.model else status.api_key
    per = "at once" if status.kind == CONCURRENT else f"per {window_seconds:g} s"
    return ResourceExhausted(
        f"rate limit exceeded: {status.kind} for {scope} is {status.limit} {per}; retry after {retry_after} s",
        reason="RATE_LIMIT_EXCEEDED",
        retry_after=retry_after,
        headers=limit_headers(status),
        limit=status.kind,
        api_key=status.api_key,
        model=status.model,
        limit_value=status.limit,
        window_seconds=f"{window_seconds:g}",
        retry_after_seconds=retry_after,
    )
