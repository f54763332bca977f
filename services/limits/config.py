"""Rate limit configuration: who may send how much, per key and per key-and-model.

`RATE_LIMITS` (JSON, or YAML through `load_limits`), for example:

    {"default": {"requests_per_minute": 60, "tokens_per_minute": 100000, "concurrent": 8},
     "keys":    {"apiKeys/batch-job": {"requests_per_minute": 600}},
     "models":  {"gemma-3-270m": {"tokens_per_minute": 20000}},
     "window_seconds": 60, "lease_seconds": 600}

- `default` applies to every caller not named under `keys`; a key's entry overrides the
  fields it names and inherits the others from `default`. A key is named as the gateway
  sends it (`apiKeys/{id}` or a token's subject); a bare `{id}` also matches `apiKeys/{id}`.
- `models` limits each caller's use of one model (a key's calls to that model, counted
  apart from its calls to others); fields a model does not name are unlimited there.
- `null` (or absent, with no default) means unlimited; 0 refuses everything.
- `window_seconds` is the period of the "per minute" limits (60; tests shorten it), and
  `lease_seconds` how long a concurrency slot is held at most when the router never
  releases it (a crashed router), so it should exceed the longest request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass
from pydantic_settings import BaseSettings, SettingsConfigDict

_STRICT = ConfigDict(extra="forbid")
REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, CONCURRENT = "requests_per_minute", "tokens_per_minute", "concurrent"
KINDS = (REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, CONCURRENT)
# A descriptor entry that counts nothing: the OpenAI-compatible routes send it, and their
# refusals are in OpenAI's error shape (gateway/ratelimit/, gateway/envoy_config/).
SURFACE_KEY, OPENAI_SURFACE = "surface", "openai"


@dataclass(frozen=True, config=_STRICT)
class Limits:
    """One caller's (or one caller-and-model's) limits; None is unlimited."""

    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    concurrent: int | None = Field(None, ge=0)

    def of(self, kind: str) -> int | None:
        return getattr(self, kind)


@dataclass(frozen=True, config=_STRICT)
class LimitConfig:
    default: Limits = Limits()
    keys: dict[str, Limits] = Field(default_factory=dict)
    models: dict[str, Limits] = Field(default_factory=dict)
    window_seconds: float = Field(60.0, gt=0)
    lease_seconds: float = Field(600.0, gt=0)

    def for_key(self, key: str) -> Limits:
        found = self.keys.get(key)
        if found is None and key.startswith("apiKeys/"):
            found = self.keys.get(key.removeprefix("apiKeys/"))
        return self.default if found is None else found

    def for_model(self, model: str) -> Limits | None:
        return self.models.get(model)

    @property
    def requests_per_caller(self) -> bool:
        """Whether some caller has a requests-per-minute limit of its own (by `default` or
        under `keys`): only then is every request counted against its caller."""
        return any(limits.requests_per_minute is not None for limits in (self.default, *self.keys.values()))

    @property
    def limited(self) -> bool:
        """Whether any limit is set at all."""
        every = [self.default, *self.keys.values(), *self.models.values()]
        return any(limits.of(kind) is not None for limits in every for kind in KINDS)


_ADAPTER = TypeAdapter(LimitConfig)


def parse_limits(data: Mapping[str, Any] | None) -> LimitConfig:
    """Validate a parsed document; unknown fields and negative limits are errors."""
    data = dict(data or {})
    default = data.get("default") or {}
    if not isinstance(default, Mapping):
        raise ValueError("rate limits: `default` must be a mapping")
    keys = data.get("keys") or {}
    if not isinstance(keys, Mapping) or not all(isinstance(v, Mapping) for v in keys.values()):
        raise ValueError("rate limits: `keys` must map key names to limits")
    # A key inherits what it does not name from `default`; models do not.
    data["keys"] = {name: {**default, **own} for name, own in keys.items()}
    return _ADAPTER.validate_python(data)


def load_limits(text: str) -> LimitConfig:
    """From a JSON or YAML document (JSON is read as YAML)."""
    data = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, Mapping):
        raise ValueError("rate limits: the document must be a mapping")
    return parse_limits(data)


def limits_from_env(environ: Mapping[str, str] = os.environ) -> LimitConfig:
    """From `RATE_LIMITS`; with none set, no limits at all."""
    return load_limits(environ.get("RATE_LIMITS", ""))


class RateLimitSettings(BaseSettings):
    """Settings of the gateway's rate limit service and the router, which must agree."""

    model_config = SettingsConfigDict(extra="ignore")

    rate_limits: str = Field(
        "",
        description="Rate limits and token quotas per API key and model (JSON or YAML; see services/limits/config.py); "
        "empty: none.",
    )
    rate_limit_redis_url: str = Field(
        "",
        description="Keep rate limit counters in Redis, shared by every gateway and router replica; empty: in "
        "each process (one gateway and one router only).",
    )

    def limit_config(self) -> LimitConfig:
        return load_limits(self.rate_limits)
