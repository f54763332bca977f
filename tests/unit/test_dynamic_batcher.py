"""The dynamic batcher's scheduling, with a plain function as the model: a burst is shared
evenly among idle instances, one instance takes what queued while it was busy, and
shutting down fails waiting calls with UNAVAILABLE instead of leaving them hanging."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.inference.batching import DynamicBatcher
from services.runtime.errors import Unavailable


class Doubler:
    """Doubles its inputs, slowly, and records each batch and which thread ran it."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[tuple[int, str]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append((len(items), threading.current_thread().name))
        time.sleep(self.seconds)
        return [2 * x for x in items]


def batcher(run: Doubler, instances: int, max_batch: int = 128) -> DynamicBatcher:
    threads = ThreadPoolExecutor(instances, thread_name_prefix="instance")
    return DynamicBatcher("m", run, threads, max_batch, 0.01, 1000, instances=instances)


async def test_a_burst_is_shared_evenly_among_idle_instances():
    run = Doubler()
    b = batcher(run, instances=2)
    results = await asyncio.gather(*(b.submit([i]) for i in range(64)))
    assert results == [[2 * i] for i in range(64)]
    assert sorted(size for size, _ in run.batches) == [32, 32]
    assert len({thread for _, thread in run.batches}) == 2  # side by side, on two threads
    await b.close()


async def test_one_instance_takes_everything_queued_up_to_the_batch_limit():
    run = Doubler()
    b = batcher(run, instances=1, max_batch=50)
    results = await asyncio.gather(*(b.submit([i, i + 1]) for i in range(40)))
    assert results == [[2 * i, 2 * i + 2] for i in range(40)]
    assert [size for size, _ in run.batches] == [50, 30]  # whole calls only, never above the limit
    await b.close()


async def test_closing_fails_waiting_calls_instead_of_leaving_them_hanging():
    run = Doubler(seconds=0.3)
    b = batcher(run, instances=1, max_batch=1)
    calls = [asyncio.ensure_future(b.submit([i])) for i in range(3)]
    await asyncio.sleep(0.1)  # the first is running, two wait
    await b.close()
    assert [size for size, _ in run.batches] == [1]  # close waited for the running batch
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(o, Unavailable) for o in outcomes) >= 2
    assert all(isinstance(o, (Unavailable, list)) for o in outcomes)


pytestmark = pytest.mark.asyncio
