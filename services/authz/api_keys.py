"""API keys: secrets checked with the registry's AuthenticateApiKey, answers cached briefly."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.authz.policy import Denied, Principal, unauthenticated
from services.runtime.identity import ADMIN, USER

ROLE_NAMES = {res.ApiKey.ROLE_USER: USER, res.ApiKey.ROLE_ADMIN: ADMIN}


@dataclass
class ApiKeys:
    """Checks key secrets with the registry, caching answers for `cache_seconds` (both
    ways: a flood of bad keys costs the registry one call per key and period)."""

    authenticate: Callable[[str], Awaitable[res.ApiKey]]  # the registry's AuthenticateApiKey
    cache_seconds: float = 1.0
    _cache: dict[str, tuple[float, Principal | Denied]] = field(default_factory=dict)

    async def principal(self, secret: str) -> Principal:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[0] < now:
            cached = (now + self.cache_seconds, await self._ask(secret))
            self._cache[digest] = cached
            if len(self._cache) > 100_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
        if isinstance(cached[1], Denied):
            raise cached[1]
        return cached[1]

    async def _ask(self, secret: str) -> Principal | Denied:
        try:
            key = await self.authenticate(secret)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return unauthenticated(error.details() or "the API key is not valid")
            raise  # the registry is unreachable: not the caller's fault, and not cached
        return Principal(key.name, frozenset(ROLE_NAMES[r] for r in key.roles), tuple(key.models))
