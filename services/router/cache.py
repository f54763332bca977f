"""Response cache: a repeated deterministic request is answered from memory.

The key is the canonical request as the chosen backend gets it (its model id and every
parameter, serialized deterministically) plus the model and version the router chose, so
two versions in an A/B split never share answers. Only deterministic requests are cached
(no sampling temperature); a caller opts out with `cache-control: no-cache` (an HTTP
header, or gRPC metadata). Entries live in an LRU with a time to live."""

from __future__ import annotations

import hashlib

from cachetools import TTLCache
from google.protobuf.message import Message
from prometheus_client import Counter

from infermesh_router.directory import Route

LOOKUPS = Counter("infermesh_router_cache_total", "Response cache lookups, by model and result.", ["model", "result"])
OPT_OUT = {"no-cache", "no-store"}


def deterministic(request: Message) -> bool:
    return not (hasattr(request, "temperature") and request.HasField("temperature") and request.temperature > 0)


def opted_out(context) -> bool:
    if context is None:
        return False
    for key, value in context.invocation_metadata() or ():
        if key == "cache-control" and OPT_OUT & {part.strip() for part in str(value).lower().split(",")}:
            return True
    return False


class ResponseCache:
    def __init__(self, max_entries: int, ttl_seconds: float) -> None:
        self._entries: TTLCache | None = TTLCache(max_entries, ttl_seconds) if max_entries > 0 else None

    def key(self, rpc: str, route: Route, outgoing: Message, context) -> str | None:
        """The entry's key, or None when this request is not to be cached."""
        if self._entries is None or not deterministic(outgoing) or opted_out(context):
            return None
        digest = hashlib.sha256(f"{rpc}\0{route.model}\0{route.version}\0".encode())
        digest.update(outgoing.SerializeToString(deterministic=True))
        return digest.hexdigest()

    def get(self, key: str | None, route: Route) -> Message | None:
        if key is None or self._entries is None:
            return None
        found = self._entries.get(key)
        LOOKUPS.labels(route.model, "hit" if found is not None else "miss").inc()
        if found is None:
            return None
        reply = type(found)()
        reply.CopyFrom(found)
        return reply

    def put(self, key: str | None, reply: Message) -> None:
        if key is not None and self._entries is not None:
            stored = type(reply)()
            stored.CopyFrom(reply)
            self._entries[key] = stored
