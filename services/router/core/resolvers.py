"""How a request's `model` becomes a backend to call: from the registry's models,
versions and deployments (kept current by registry_feed.py beside the core), or, in a
mesh without a registry, from the models the catalog's backends list.

`model` is a model id (`gemma-3-270m`) or a model and version (`gemma-3-270m@q4-k-m`).
Without a version, one of the model's deployments with traffic is picked at random in
proportion to its weight (A/B splits, canaries); with one, a deployment serving that
version is used whatever its weight (so a canary can be tried before it gets traffic).
The deployment names a backend kind or instance; the catalog says which instances exist
and which models they have ready.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.router.core.load import ModelLoad
from services.runtime.catalog import POOL_KINDS, Catalog, ServiceInstance, pool_name
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

AUTO = "auto"
STRATEGIES = ("quality", "cost", "latency", "least-busy")
# How long after a pool first appears in the catalog the router keeps calling its instances
# by name: the control plane must push the pool's cluster, Envoy warm it, and its first
# health check pass. 2 s was not always enough on a loaded CI machine (a request sent to
# the pool then got Envoy's 503 "no healthy upstream"); by name, nothing is lost meanwhile.
POOL_SETTLE_SECONDS = 5.0


def model_id(requested: str) -> str:
    """A model's id without its version (`gemma-3-270m@q4-k-m` → `gemma-3-270m`)."""
    return requested.partition("@")[0]


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    model: str  # the model id the client asked for
    version: str  # the version id ("" when the model is not in a registry)
    backend: str  # the catalog instance (Envoy cluster) to call
    backend_model: str  # the id the backend serves it under
    max_output_tokens: int = 0
    context_window_tokens: int = 0
    provider: str = ""
    pricing: res.Pricing | None = None


@dataclass
class _Registry:
    """The registry's state as replayed from its feed."""

    models: dict[str, res.Model] = field(default_factory=dict)
    versions: dict[str, res.ModelVersion] = field(default_factory=dict)
    deployments: dict[str, res.Deployment] = field(default_factory=dict)
    sequence: int = 0

    def apply(self, change: res.Change) -> None:
        self.sequence = max(self.sequence, change.sequence)
        kind = change.WhichOneof("resource")
        if kind is None:
            return
        table = {"model": self.models, "model_version": self.versions, "deployment": self.deployments}[kind]
        if change.kind == res.Change.KIND_DELETED:
            table.pop(change.name, None)
        else:
            table[change.name] = getattr(change, kind)


class Resolver(Protocol):
    """Where requests for a model go, and what is known of the model."""

    def route(self, requested: str) -> Route:
        """Which backend answers a request for `requested` (`model` or `model@version`)."""
        ...

    def ranked(self, capability: str, strategy: str, load: ModelLoad) -> list[str]:
        """Models with `capability` that can answer now, best first (`auto`)."""
        ...

    def fallbacks(self, requested: str) -> tuple[str, ...]: ...

    def capable(self, model: str, capability: str) -> bool:
        """False when the model is known not to have `capability` (True when unknown)."""
        ...

    def context_window(self, model: str) -> int | None: ...

    def models(self) -> list[str]:
        """Model ids with a deployment (or a backend listing them)."""
        ...

    def requestable(self) -> list[str]:
        """What a request's `model` may name (with versions, `id@version`)."""
        ...

    def routable(self) -> list[str]:
        """Model ids whose requests can be sent somewhere now."""
        ...


def candidates(resolver: Resolver, requested: str, capability: str, load: ModelLoad) -> list[str]:
    """`requested`, then its fallbacks, each once. `auto` (or `auto:<strategy>`) means
    every model with the capability, best first: the first answers, the others are its
    fallbacks."""
    if requested == AUTO or requested.startswith(f"{AUTO}:"):
        ranked = resolver.ranked(capability, requested.partition(":")[2] or "quality", load)
        if not ranked:
            raise Unavailable(
                f"no registered model with {capability} has a deployment on a live backend",
                reason="NO_MODEL_FOR_TASK",
                capability=capability,
            )
        return ranked
    if not resolver.capable(requested, capability):
        raise FailedPrecondition(
            f"model {requested!r} does not support {capability}",
            reason="CAPABILITY_NOT_SUPPORTED",
            model=requested,
            capability=capability,
        )
    # A fallback that cannot do the work is no fallback for it.
    fallbacks = [f for f in resolver.fallbacks(requested) if resolver.capable(f, capability)]
    return list(dict.fromkeys([requested, *fallbacks]))


class CatalogResolver:
    """A mesh without a registry: a model is served by the backends whose catalog
    entries list it; no versions, fallbacks or `auto`."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def _backends(self) -> list[ServiceInstance]:
        return [i for i in self._catalog.instances() if i.kind not in ("router", "registry")]

    def models(self) -> list[str]:
        return sorted({m for instance in self._backends() for m in instance.models})

    requestable = routable = models

    def route(self, requested: str) -> Route:
        for instance in self._backends():
            if requested in instance.models:
                return Route(model=requested, version="", backend=instance.name, backend_model=requested)
        raise NotFound(
            f"model {requested!r} is not served by this mesh; available: {', '.join(self.models()) or 'none'}",
            reason="MODEL_NOT_FOUND",
            model=requested,
        )

    def ranked(self, capability: str, strategy: str, load: ModelLoad) -> list[str]:
        raise InvalidArgument("`auto` needs the registry", reason="AUTO_WITHOUT_REGISTRY")

    def fallbacks(self, requested: str) -> tuple[str, ...]:
        return ()

    def context_window(self, model: str) -> int | None:
        return None

    def capable(self, model: str, capability: str) -> bool:
        return True  # the backend says


class RegistryResolver:
    """The registry's models, versions and deployments, as its watch feed replays them
    (`apply`), resolved against the catalog's live backends. `usable` is False for a
    backend cooling down."""

    def __init__(
        self, catalog: Catalog, usable: Callable[[str], bool] = lambda backend: True, clock=time.monotonic
    ) -> None:
        self._catalog = catalog
        self._usable = usable
        self._clock = clock
        self._state = _Registry()
        self._pools_seen: dict[str, float] = {}

    @property
    def sequence(self) -> int:
        """The last change applied (the feed resumes after it)."""
        return self._state.sequence

    def apply(self, change: res.Change) -> None:
        self._state.apply(change)

    def models(self) -> list[str]:
        """Model ids that have at least one deployment."""
        deployed = {_model_of(d.name) for d in self._state.deployments.values()}
        return sorted(name.removeprefix("models/") for name in deployed if name in self._state.models)

    def requestable(self) -> list[str]:
        """What a request's `model` may name: each deployed model's id, and `id@version`
        for each of its versions a deployment serves."""
        names = set(self.models())
        for deployment in self._state.deployments.values():
            model, _, version = deployment.version.partition("/versions/")
            if model in self._state.models and version:
                names.add(f"{model.removeprefix('models/')}@{version}")
        return sorted(names)

    def ranked(self, capability: str, strategy: str, load: ModelLoad) -> list[str]:
        """Model ids that have `capability` and a deployment with traffic on a usable
        backend, best first by `strategy` (see STRATEGIES)."""
        deployed = {
            _model_of(d.name) for d in self._state.deployments.values() if d.traffic_weight > 0 and self._instances(d)
        }
        models = [m for name, m in self._state.models.items() if name in deployed and capability in m.capabilities]

        def quality(m: res.Model) -> tuple:
            return (m.quality_rank == 0, m.quality_rank)

        def price(m: res.Model) -> float:
            return m.pricing.input_per_1k_tokens + m.pricing.output_per_1k_tokens

        keys = {
            "quality": lambda m: (*quality(m), price(m)),
            "cost": lambda m: (price(m), *quality(m)),
            # Models never measured go first, so every model gets measured.
            "latency": lambda m: (load.latency.get(_id(m), 0.0), *quality(m)),
            "least-busy": lambda m: (load.in_flight.get(_id(m), 0), *quality(m)),
        }
        if strategy not in keys:
            raise InvalidArgument(
                f"unknown routing strategy {strategy!r}; use auto:{', auto:'.join(STRATEGIES)}",
                reason="UNKNOWN_STRATEGY",
                strategy=strategy,
            )
        return [_id(m) for m in sorted(models, key=lambda m: (*keys[strategy](m), m.name))]

    def fallbacks(self, requested: str) -> tuple[str, ...]:
        model = self._state.models.get(f"models/{requested.partition('@')[0]}")
        return tuple(f.removeprefix("models/") for f in model.fallbacks) if model is not None else ()

    def capable(self, model_id: str, capability: str) -> bool:
        """What the registry says the model can do (a model it does not know is the
        route's NOT_FOUND to report)."""
        model = self._state.models.get(f"models/{model_id.partition('@')[0]}")
        return model is None or capability in model.capabilities

    def context_window(self, model_id: str) -> int | None:
        """The model's context window in tokens, when the registry knows it."""
        model = self._state.models.get(f"models/{model_id.partition('@')[0]}")
        return (model.parameters.context_window_tokens or None) if model is not None else None

    def route(self, requested: str) -> Route:
        model_id, _, version_id = requested.partition("@")
        model = self._state.models.get(f"models/{model_id}")
        if model is None:
            raise NotFound(
                f"model {model_id!r} is not registered; available: {', '.join(self.models()) or 'none'}",
                reason="MODEL_NOT_FOUND",
                model=model_id,
            )
        if version_id and f"{model.name}/versions/{version_id}" not in self._state.versions:
            raise NotFound(
                f"model {model_id!r} has no version {version_id!r}", reason="VERSION_NOT_FOUND", model=model_id
            )
        candidates, options = self._options(model.name, version_id)
        if not options:
            if any(self._instances(d, cooling_too=True) for d in candidates):
                raise Unavailable(
                    f"model {requested!r} runs only on backends cooling down after repeated failures",
                    reason="BACKEND_COOLING",
                    model=requested,
                )
            # `deployments`: how many it has with traffic, whose backends are not in the
            # catalog now. 0 is for an operator to fix (the OpenAI surface answers 404,
            # not a 503 that clients retry); more is a backend down or restarting.
            raise Unavailable(
                f"model {requested!r} has no deployment with traffic on a backend of this mesh",
                reason="MODEL_NOT_DEPLOYED",
                model=requested,
                deployments=len(candidates),
            )
        deployment = random.choices([d for d, _ in options], weights=[w for _, w in options])[0]
        version = self._state.versions[deployment.version]
        backend_model = version.runtime.backend_model or model_id
        return Route(
            model=model_id,
            version=deployment.version.rsplit("/", 1)[-1],
            backend=self._backend_for(deployment, backend_model),
            backend_model=backend_model,
            max_output_tokens=model.parameters.max_output_tokens,
            context_window_tokens=model.parameters.context_window_tokens,
            provider=model.provider,
            pricing=model.pricing if model.HasField("pricing") else None,
        )

    def routable(self) -> list[str]:
        """Model ids a request naming just the model can be sent for now (a deployment
        with traffic on a usable backend): what the router's per-model health reports."""
        return [m for m in self.models() if self._options(f"models/{m}", "")[1]]

    def _options(
        self, model_name: str, version_id: str
    ) -> tuple[list[res.Deployment], list[tuple[res.Deployment, int]]]:
        """The model's deployments for the request (a version's whatever their weight, else
        those with traffic), and those of them on a usable backend with their weights."""
        deployments = [d for d in self._state.deployments.values() if _model_of(d.name) == model_name]
        if version_id:
            version_name = f"{model_name}/versions/{version_id}"
            candidates = [d for d in deployments if d.version == version_name]
            weights = [max(d.traffic_weight, 1) for d in candidates]
        else:
            candidates = [d for d in deployments if d.traffic_weight > 0]
            weights = [d.traffic_weight for d in candidates]
        return candidates, [(d, w) for d, w in zip(candidates, weights, strict=True) if self._instances(d)]

    def _instances(self, deployment: res.Deployment, cooling_too: bool = False) -> list[ServiceInstance]:
        return [
            i
            for i in self._catalog.instances()
            if deployment.backend in (i.kind, i.name)
            and i.kind not in ("router", "registry")
            and (cooling_too or self._usable(i.name))
        ]

    def _backend_for(self, deployment: res.Deployment, backend_model: str) -> str:
        """The Envoy cluster to call: for a deployment on a kind of backend with replicas
        that have the model ready, their pool (Envoy balances among them and retries on
        another); else one instance, which loads the model on demand."""
        instances = self._instances(deployment)
        ready = [i for i in instances if backend_model in i.models]
        pool = pool_name(deployment.backend, backend_model)
        if ready and deployment.backend in POOL_KINDS and self._usable(pool) and self._settled(pool):
            return pool
        return random.choice(ready or instances).name

    def _settled(self, pool: str) -> bool:
        """Whether the pool has existed long enough for Envoy to have it: the router and
        the control plane follow the catalog separately, so for a moment after a model
        becomes ready the router knows of its pool and Envoy does not yet (a request
        there would find no route). Until then its instances are called by name. Pools
        in the catalog when the router started are settled (the mesh waited for them)."""
        now = self._clock()
        first_seen = self._pools_seen.setdefault(pool, now)
        return now - first_seen >= POOL_SETTLE_SECONDS

    async def watch_pools(self) -> None:
        """Note when each pool appears in the catalog (runs for the resolver's life)."""
        first = True
        async for view in self._catalog.watch():
            seen = 0.0 if first else self._clock()
            for instance in view:
                if instance.kind in POOL_KINDS:
                    for model in instance.models:
                        self._pools_seen.setdefault(pool_name(instance.kind, model), seen)
            first = False


def _id(model: res.Model) -> str:
    return model.name.removeprefix("models/")


def _model_of(name: str) -> str:
    return "/".join(name.split("/")[:2])
