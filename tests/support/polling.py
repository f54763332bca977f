"""Waiting for something to become true: one helper, for plain tests and for async ones.

    await eventually_async(lambda: batcher(app).in_flight == 0)
    reply = eventually(lambda: httpx.get(url), until=lambda r: r.status_code == 200, timeout=60)

`check` is called every `interval` seconds until its value is good: truthy, or what
`until(value)` accepts. That value is returned (so a test can wait for a reply and then
look at it). After `timeout` seconds the test fails saying what never became true, with
the last value or exception seen. Exceptions of the types in `ignoring` (a connection
refused while a server starts, say) count as "not yet"; any other fails the test at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Exceptions = type[BaseException] | tuple[type[BaseException], ...]
_NOTHING = object()


class _Attempts:
    """The deadline and what the last attempt saw."""

    def __init__(self, check: Callable, timeout: float, what: str | None, until: Callable) -> None:
        self.check, self.timeout, self.what, self.until = check, timeout, what, until
        self.deadline = time.monotonic() + timeout
        self.last: object = _NOTHING
        self.error: BaseException | None = None

    def saw(self, value: object) -> None:
        self.last, self.error = value, None

    def raised(self, error: BaseException) -> None:
        self.last, self.error = _NOTHING, error

    def failure(self) -> AssertionError:
        seen = f"last error: {self.error!r}" if self.error is not None else f"last value: {_short(self.last)}"
        return AssertionError(f"never true within {self.timeout:g}s: {self.what or self.described()} ({seen})")

    def described(self) -> str:
        text = _describe(self.check)
        if self.until is not bool and "until" not in text:  # a lambda's line may hold both
            text += f", until {_describe(self.until)}"
        return text

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
    what: str | None = None,
    ignoring: Exceptions = (),
    until: Callable[[T], object] = bool,
) -> T:
    """The first good value `check()` returns within `timeout` seconds."""
    attempts = _Attempts(check, timeout, what, until)
    while True:
        try:
            value = check()
        except ignoring as error:
            attempts.raised(error)
        else:
            if until(value):
                return value
            attempts.saw(value)
        if attempts.expired():
            raise attempts.failure() from attempts.error
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
    what: str | None = None,
    ignoring: Exceptions = (),
    until: Callable[[T], object] = bool,
) -> T:
    """eventually() inside an event loop: `check` may be a coroutine function, and the
    loop runs (servers in this process keep serving) between attempts."""
    attempts = _Attempts(check, timeout, what, until)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as error:
            attempts.raised(error)
        else:
            if until(value):
                return value
            attempts.saw(value)
        if attempts.expired():
            raise attempts.failure() from attempts.error
        await asyncio.sleep(interval)


def _describe(check: Callable) -> str:
    """The check's source for a lambda (`lambda: x == 3`), else its name."""
    name = getattr(check, "__qualname__", repr(check))
    if name.rpartition(".")[2] != "<lambda>":
        return name
    try:
        line = inspect.getsource(check).strip()
    except (OSError, TypeError):
        return name
    return _short(line[line.find("lambda") :], quote=False)


def _short(value: object, quote: bool = True, limit: int = 300) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[:limit] + "…"
