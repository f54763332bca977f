"""The router's core, wired once: where a request goes (the resolver), how backends are
reached (the client), and what every call shares (cooldown, retry budget, response cache,
metering, quotas, load). failover.py and orchestration.py make calls with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from services.router.core.backend import BackendClient
from services.router.core.budget import RetryBudget
from services.router.core.cache import ResponseCache
from services.router.core.calls import CallContext
from services.router.core.coalescing import EmbedCoalescer
from services.router.core.cooldown import Cooldown
from services.router.core.load import ModelLoad
from services.router.core.metering import Metering
from services.router.core.quota import Quotas
from services.router.core.resolvers import Resolver, Route, candidates
from services.router.core.rpcs import Rpc, token_limit
from services.runtime.errors import InvalidArgument, Unavailable

CONTEXT_TOO_LONG = "CONTEXT_LENGTH_EXCEEDED"


@dataclass(frozen=True)
class Prepared:
    """One attempt, ready to send: the request as the backend gets it, where, how long."""

    outgoing: Message
    route: Route
    timeout: float


class RouterCore:
    def __init__(
        self,
        resolver: Resolver,
        client: BackendClient,
        *,
        default_timeout: float,
        cooldown: Cooldown | None = None,
        cache: ResponseCache | None = None,
        budget: RetryBudget | None = None,
        metering: Metering | None = None,
        quotas: Quotas | None = None,
        fallback_after_seconds: float = 60.0,
        embed_coalesce_in_flight: int = 0,
        replicas: Callable[[str], int] = lambda model: 1,
    ) -> None:
        self.resolver = resolver
        self.client = client
        self.default_timeout = default_timeout
        self.cooldown = cooldown or Cooldown(failures=0, seconds=0)
        self.cache = cache or ResponseCache(max_entries=0, ttl_seconds=0)
        self.budget = budget or RetryBudget(max_tokens=10, token_ratio=0.1)
        self.metering = metering or Metering()
        self.quotas = quotas or Quotas(None)
        self.load = ModelLoad()
        self.fallback_after_seconds = fallback_after_seconds
        self._embed_in_flight = embed_coalesce_in_flight
        self._replicas = replicas  # backends serving a model (the embedding allowance is per replica)
        self._embeddings = EmbedCoalescer(
            lambda request, backend, timeout: client.call(Rpc.EMBED, request, backend, timeout)
        )

    # What the edge asks about models.

    def models(self) -> list[str]:
        return self.resolver.models()

    def requestable(self) -> list[str]:
        return self.resolver.requestable()

    def routable(self) -> list[str]:
        return self.resolver.routable()

    def candidates(self, requested: str, capability: str) -> list[str]:
        return candidates(self.resolver, requested, capability, self.load)

    def context_window(self, model: str) -> int | None:
        return self.resolver.context_window(model)

    # One attempt.

    def prepare(self, request: Message, call: CallContext) -> Prepared:
        """The request as the chosen backend should get it (its own model id), where, and
        with how long to answer; the registry's limits are checked here."""
        route = self.resolver.route(request.model)
        if not self.cooldown.claim(route.backend):
            raise Unavailable(
                f"{route.backend} is cooling down after repeated failures",
                reason="BACKEND_COOLING",
                backend=route.backend,
            )
        limit_holder = token_limit(request)
        asked = limit_holder.max_tokens if limit_holder is not None else 0  # 0: the backend's default
        limit = route.max_output_tokens
        if limit and asked > limit:
            raise InvalidArgument(
                f"max_tokens {asked} is above {route.model}'s limit of {limit} output tokens",
                reason="MAX_TOKENS_TOO_LARGE",
                model=route.model,
                max_tokens=asked,
                limit=limit,
            )
        window = route.context_window_tokens
        if window and asked >= window:
            # Certain without a tokenizer: a prompt is at least one token. The backend,
            # which has the tokenizer, checks the prompt itself (CONTEXT_LENGTH_EXCEEDED).
            raise InvalidArgument(
                f"max_tokens {asked} leaves no room for a prompt in {route.model}'s context window of {window} tokens",
                reason=CONTEXT_TOO_LONG,
                model=route.model,
                max_tokens=asked,
                context_length=window,
            )
        outgoing = type(request)()
        outgoing.CopyFrom(request)
        outgoing.model = route.backend_model
        outgoing.ClearField("routing")  # the router's alone: what is left is the backend's message
        remaining = call.time_remaining()
        return Prepared(outgoing, route, remaining if remaining is not None else self.default_timeout)

    async def send(self, rpc: Rpc, prepared: Prepared, timeout: float) -> Message:
        """A unary call of the backend; embeddings may share a call with others when the
        backend is busy (the in-flight allowance is per replica that serves the model)."""
        if rpc is Rpc.EMBED:
            allowance = self._embed_in_flight * max(self._replicas(prepared.outgoing.model), 1)
            return await self._embeddings.embed(prepared.outgoing, prepared.route.backend, timeout, allowance)
        return await self.client.call(rpc, prepared.outgoing, prepared.route.backend, timeout)

    def open(self, rpc: Rpc, prepared: Prepared) -> AsyncIterator[Message]:
        return self.client.stream(rpc, prepared.outgoing, prepared.route.backend, prepared.timeout)

    async def close(self) -> None:
        await self._embeddings.close()
        await self.cache.close()
        await self.quotas.close()
        await self.client.close()
