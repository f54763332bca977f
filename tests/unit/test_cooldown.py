"""The router's per-backend circuit, on a clock the test moves: it opens after the
configured run of failures, lets exactly one probe through when the cooldown ends,
closes on the probe's success and reopens at once on its failure."""

from __future__ import annotations

from services.router.core.cooldown import Cooldown


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_backend_cools_down_after_consecutive_failures_and_recovers_through_one_probe():
    clock = Clock()
    circuit = Cooldown(failures=3, seconds=10, clock=clock)
    circuit.failed("b")
    circuit.failed("b")
    circuit.succeeded("b")  # not consecutive: the count starts again
    circuit.failed("b")
    circuit.failed("b")
    assert circuit.claim("b")
    circuit.failed("b")
    assert not circuit.available("b") and not circuit.claim("b")
    assert circuit.claim("other")  # one backend's trouble is its own

    clock.now += 10
    assert circuit.claim("b")  # the probe
    assert not circuit.claim("b")  # only one at a time
    circuit.failed("b")  # the probe failed: cool down again, at once
    assert not circuit.available("b")

    clock.now += 10
    assert circuit.claim("b")
    circuit.succeeded("b")
    assert circuit.claim("b") and circuit.claim("b")


def test_zero_failures_means_never():
    circuit = Cooldown(failures=0, seconds=10)
    for _ in range(100):
        circuit.failed("b")
    assert circuit.claim("b")
