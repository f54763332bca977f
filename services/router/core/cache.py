"""Response cache: a repeated deterministic request is answered without a backend.

The key is the canonical request as the chosen backend gets it (its model id and every
parameter, serialized deterministically) plus the model and version the router chose, so
two versions in an A/B split never share answers. Only deterministic requests are cached
(no sampling temperature); a caller opts out with `cache-control: no-cache` (an HTTP
header, or gRPC metadata: CallContext.cache_opt_out).

Entries live in this router's memory (an LRU with a time to live) or, with
`CACHE_REDIS_URL`, in Redis, shared by every router replica; there the time to live is
Redis's own expiry and the size bound is the server's `maxmemory` with an LRU policy.
A cache that cannot be reached is a miss, never a failed request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from cachetools import TTLCache
from google.protobuf.message import Message
from prometheus_client import Counter

from services.router.core.calls import CallContext
from services.router.core.resolvers import Route
from services.router.core.rpcs import Rpc
from services.runtime.telemetry import past_span

log = logging.getLogger(__name__)
LOOKUPS = Counter(
    "infermesh_router_cache_total",
    "Response cache lookups, by model and result (hit, miss, error).",
    ["model", "result"],
)
REDIS_PREFIX = "infermesh:response:"


def deterministic(request: Message) -> bool:
    """Whether the request decodes greedily (only such answers are cached): no sampling
    temperature in its config (generation) or in itself (transcription)."""
    holder = getattr(request, "config", request)
    return not ("temperature" in holder.DESCRIPTOR.fields_by_name and holder.temperature > 0)


@dataclass(frozen=True)
class CacheKey:
    digest: str
    reply_type: type[Message]


class ResponseCache:
    def __init__(self, max_entries: int, ttl_seconds: float, redis_url: str = "") -> None:
        self._ttl = ttl_seconds
        self._entries: TTLCache | None = TTLCache(max_entries, ttl_seconds) if max_entries > 0 else None
        self._redis = None
        if redis_url:
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)

    @property
    def enabled(self) -> bool:
        return self._entries is not None or self._redis is not None

    def key(self, rpc: Rpc, route: Route, outgoing: Message, call: CallContext) -> CacheKey | None:
        """The entry's key, or None when this request is not to be cached."""
        if not self.enabled or not deterministic(outgoing) or call.cache_opt_out:
            return None
        digest = hashlib.sha256(f"{rpc.method}\0{route.model}\0{route.version}\0".encode())
        digest.update(outgoing.SerializeToString(deterministic=True))
        return CacheKey(digest.hexdigest(), rpc.reply_type)

    async def get(self, key: CacheKey | None, route: Route) -> Message | None:
        if key is None:
            return None
        started = time.time_ns()
        try:
            found = await self._read(key)
            result = "hit" if found is not None else "miss"
        except Exception as exc:  # noqa: BLE001 - an unreachable cache is a miss
            log.warning("response cache unavailable", extra={"error": repr(exc)})
            found, result = None, "error"
        LOOKUPS.labels(route.model, result).inc()
        store = "redis" if self._redis is not None else "memory"
        past_span(
            "response cache lookup",
            started,
            time.time_ns(),
            {"infermesh.cache": result, "infermesh.cache.store": store},
        )
        return found

    async def put(self, key: CacheKey | None, reply: Message) -> None:
        if key is None:
            return
        try:
            await self._write(key, reply)
        except Exception as exc:  # noqa: BLE001 - the answer is still the caller's
            log.warning("response cache unavailable", extra={"error": repr(exc)})

    async def _read(self, key: CacheKey) -> Message | None:
        if self._redis is not None:
            data = await self._redis.get(REDIS_PREFIX + key.digest)
            return key.reply_type.FromString(data) if data is not None else None
        stored = self._entries.get(key.digest)
        if stored is None:
            return None
        reply = key.reply_type()
        reply.CopyFrom(stored)
        return reply

    async def _write(self, key: CacheKey, reply: Message) -> None:
        if self._redis is not None:
            data = reply.SerializeToString(deterministic=True)
            await self._redis.set(REDIS_PREFIX + key.digest, data, px=int(self._ttl * 1000))
            return
        stored = key.reply_type()
        stored.CopyFrom(reply)
        self._entries[key.digest] = stored

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
