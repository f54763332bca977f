"""What the core knows about a call besides its request: who is calling, whether it may
be answered from the response cache, and by when it must end. Read once at the edge."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.runtime.identity import ANONYMOUS, Caller

Clock = Callable[[], float]


@dataclass(frozen=True)
class CallContext:
    caller: Caller = ANONYMOUS
    cache_opt_out: bool = False  # the caller asked for a fresh answer (`cache-control: no-cache`)
    deadline: float | None = None  # on `clock`; None: none of the caller's own
    clock: Clock = field(default=time.monotonic, compare=False)

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()


# A function the edge gives the core to tell the caller who answered, as soon as it is
# known (response headers: model, version, backend, fallback, cache).
Announce = Callable[["Answer", str], Awaitable[None]]  # noqa: F821 - Answer: failover.py
