"""Steady client load through the front door for fault tests: a few clients embedding
one sentence after another, each request's start, end and HTTP status recorded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

MINILM = "all-minilm-l6-v2"
NO_CACHE = {"cache-control": "no-cache"}  # every request must reach a backend
CLIENTS = 4


@dataclass
class Outcome:
    started: float
    ended: float
    status: int


def embed(base: str, text: str) -> int:
    try:
        reply = httpx.post(f"{base}/v1/embed", json={"model": MINILM, "inputs": [text]}, headers=NO_CACHE, timeout=30)
    except httpx.HTTPError:
        return 0
    return reply.status_code


class Load:
    """CLIENTS threads embedding one sentence after another until stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(CLIENTS)
        self._workers = []

    def __enter__(self) -> Load:
        self._workers = [self._pool.submit(self._run, i) for i in range(CLIENTS)]
        return self

    def _run(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            status = embed(self.base, f"client {worker} sentence {n}")
            self.outcomes.append(Outcome(started, time.monotonic(), status))
            n += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.result()
        self._pool.shutdown()

    def failed(self, after: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200 and o.started >= after]
