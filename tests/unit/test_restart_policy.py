"""The launcher's restart policy on a hand-moved clock: a crashed child comes back after
a pause that doubles with each recent crash, crashes long ago are forgotten, and a child
that crashes five times within a minute is left down while the others are restarted."""

from __future__ import annotations

from launcher.supervision import GiveUp, Restart, RestartPolicy, Supervisor


def test_a_crashed_child_is_restarted_after_a_pause_that_doubles():
    supervisor = Supervisor(RestartPolicy(crash_limit=5, window_seconds=60, first_delay_seconds=0.5))
    assert supervisor.exited("router", 100.0) == Restart(100.5, 1)
    assert supervisor.due(100.4) == []
    assert supervisor.due(100.5) == ["router"]
    assert supervisor.due(100.6) == []  # handed out once
    assert supervisor.exited("router", 101.0) == Restart(102.0, 2)
    assert supervisor.exited("router", 103.0) == Restart(105.0, 3)


def test_the_pause_stops_growing_at_its_cap():
    supervisor = Supervisor(RestartPolicy(crash_limit=100, window_seconds=600, max_delay_seconds=8))
    delays = [supervisor.exited("vector", t).at - t for t in range(0, 100, 10)]
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and set(delays[5:]) == {8.0}


def test_crashes_older_than_the_window_are_forgotten():
    supervisor = Supervisor(RestartPolicy(crash_limit=3, window_seconds=60))
    supervisor.exited("envoy", 0.0)
    supervisor.exited("envoy", 30.0)
    # The first crash is a minute old: this is the second in the window, not the third.
    assert supervisor.exited("envoy", 61.0) == Restart(62.0, 2)


def test_a_child_that_keeps_crashing_is_left_down_and_the_others_still_restart():
    supervisor = Supervisor(RestartPolicy(crash_limit=5, window_seconds=60))
    outcomes = [supervisor.exited("inference-1", float(t)) for t in range(0, 50, 10)]
    assert all(isinstance(o, Restart) for o in outcomes[:4]) and outcomes[4] == GiveUp(5)
    assert supervisor.given_up == {"inference-1"}
    assert "inference-1" not in supervisor.due(1000.0)
    assert supervisor.exited("router", 60.0) == Restart(60.5, 1)
    assert supervisor.due(61.0) == ["router"]
