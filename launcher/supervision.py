"""One-for-one supervision of the mesh's children, transport-free (told of exits and the
time, it says what to restart when), in the spirit of systemd's `Restart=on-failure` and
Erlang/OTP's restart intensity: a child that exits is started again after a pause that
doubles with each recent crash, and one that crashes `crash_limit` times within
`window_seconds` is left down (reported, not restarted) while the rest keep serving."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    crash_limit: int = 5  # crashes within the window that leave a child down
    window_seconds: float = 60.0
    first_delay_seconds: float = 0.5  # then 1, 2, 4... up to max_delay_seconds
    max_delay_seconds: float = 8.0


@dataclass(frozen=True)
class Restart:
    """Start the child again at `at` (its crash count in the window was `crashes`)."""

    at: float
    crashes: int


@dataclass(frozen=True)
class GiveUp:
    """Leave the child down: it crashed `crashes` times within the window."""

    crashes: int


@dataclass
class Supervisor:
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _crashes: dict[str, deque[float]] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    given_up: set[str] = field(default_factory=set)

    def exited(self, name: str, now: float) -> Restart | GiveUp:
        """A child exited at `now`: when to start it again, or that it stays down."""
        recent = self._crashes.setdefault(name, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.policy.window_seconds:
            recent.popleft()
        if len(recent) >= self.policy.crash_limit:
            self._due.pop(name, None)
            self.given_up.add(name)
            return GiveUp(len(recent))
        delay = min(self.policy.max_delay_seconds, self.policy.first_delay_seconds * 2 ** (len(recent) - 1))
        self._due[name] = now + delay
        return Restart(now + delay, len(recent))

    def due(self, now: float) -> list[str]:
        """Children whose restart time has come (each handed out once)."""
        ready = sorted(name for name, at in self._due.items() if at <= now)
        for name in ready:
            del self._due[name]
        return ready
