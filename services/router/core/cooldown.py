"""Per-backend cooldown: a circuit breaker in the router, next to Envoy's outlier
detection. Envoy ejects hosts that fail health checks or return 5xx, but a backend that
is up and healthy can still fail every request (a provider that is rate-limiting, a model
that keeps running out of memory). After `failures` consecutive failures the router stops
choosing that backend for `seconds`, so requests go straight to a fallback instead of
waiting on it; then one request is let through (half-open), and a success closes the
circuit again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

COOLDOWNS = Counter("infermesh_router_cooldowns_total", "Times a backend was put in cooldown.", ["backend"])
COOLING = Gauge("infermesh_router_backend_cooling", "1 while the router avoids a backend.", ["backend"])


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class Cooldown:
    def __init__(self, failures: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._seconds = seconds
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def available(self, backend: str) -> bool:
        """Whether `backend` may be chosen now: not cooling, or due for its probe."""
        circuit = self._circuits.get(backend)
        if circuit is None or circuit.open_until == 0.0:
            return True
        return self._clock() >= circuit.open_until and not circuit.probing

    def claim(self, backend: str) -> bool:
        """Take `backend` for one request; a cooled-down one lets a single probe through."""
        if not self.available(backend):
            return False
        circuit = self._circuits.get(backend)
        if circuit is not None and circuit.open_until:
            circuit.probing = True  # half-open: this request finds out
        return True

    def succeeded(self, backend: str) -> None:
        if self._circuits.pop(backend, None) is not None:
            COOLING.labels(backend).set(0)

    def failed(self, backend: str) -> None:
        if self._threshold <= 0:
            return
        circuit = self._circuits.setdefault(backend, _Circuit())
        circuit.failures += 1
        if circuit.probing or circuit.failures >= self._threshold:
            circuit.open_until = self._clock() + self._seconds
            circuit.probing = False
            COOLDOWNS.labels(backend).inc()
            COOLING.labels(backend).set(1)
