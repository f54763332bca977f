"""Retries for provider calls: only retryable failures (429, 5xx, timeouts, connection
errors), waiting what the provider asked (Retry-After) or backing off with jitter, a few
attempts at most. The SDKs' own retries are off, so retries never stack."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from services.providers.errors import RETRYABLE
from services.runtime.errors import DomainError

log = logging.getLogger(__name__)
T = TypeVar("T")


def retryable(error: BaseException) -> bool:
    return isinstance(error, DomainError) and error.code in RETRYABLE


class Retrier:
    def __init__(self, attempts: int, max_wait: float) -> None:
        self._attempts = attempts
        self._max_wait = max_wait
        self._backoff = wait_random_exponential(multiplier=0.25, max=max(max_wait, 0.25))

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after", None)
        wait = min(asked, self._max_wait) if asked is not None else self._backoff(state)
        log.warning(
            "provider call failed; retrying",
            extra={"attempt": state.attempt_number, "wait_seconds": round(wait, 3), "error": str(error)},
        )
        return wait

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                return await attempt()
        raise AssertionError("unreachable")  # reraise=True re-raises the last error
