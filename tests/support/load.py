"""Steady client load through the front door for fault tests: a few clients embedding
one sentence after another, each request's start, end and HTTP status recorded.

Each client keeps one HTTP client (and its keep-alive connection) for the whole load, as
an SDK does: a new httpx client per request costs ~45 ms of the test's own CPU (its TLS
context), which made the load a measure of the test machine's speed rather than the
mesh's."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from support.polling import eventually

MINILM = "all-minilm-l6-v2"
NO_CACHE = {"cache-control": "no-cache"}  # every request must reach a backend
CLIENTS = 4


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    body: str = ""  # what came back with a failure


def embed(base: str, text: str) -> int:
    """The HTTP status of one embedding request, 0 when no answer came back."""
    with httpx.Client() as client:
        return attempt(client, base, text)[0]


def attempt(client: httpx.Client, base: str, text: str) -> tuple[int, str]:
    """The HTTP status of one embedding request (0 when no answer came back), and the
    body of a failure."""
    body = {"model": MINILM, "inputs": [text]}
    try:
        reply = client.post(f"{base}/v1/embed", json=body, headers=NO_CACHE, timeout=30)
    except httpx.HTTPError as error:
        return 0, repr(error)
    return reply.status_code, "" if reply.status_code == 200 else reply.text


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
        with httpx.Client() as client:
            n = 0
            while not self._stop.is_set():
                started = time.monotonic()
                status, body = attempt(client, self.base, f"client {worker} sentence {n}")
                self.outcomes.append(Outcome(started, time.monotonic(), status, body))
                n += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.result()
        self._pool.shutdown()

    def answered_after(self, moment: float) -> list[Outcome]:
        """The requests started after `moment` that have come back."""
        return [o for o in list(self.outcomes) if o.started > moment]

    def until_answered_after(self, moment: float, count: int, timeout: float = 60) -> list[Outcome]:
        """Keep the load going until `count` requests started after `moment` have come
        back: a test then asserts what happened to them, not how fast this machine is."""
        return eventually(
            lambda: self.answered_after(moment),
            until=lambda done: len(done) >= count,
            timeout=timeout,
            interval=0.1,
            what=f"{count} requests answered after the fault",
        )

    def failed(self, after: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200 and o.started >= after]
