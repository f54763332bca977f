"""Resource readings on this host, for real: no CUDA means no accelerators and no NVML
warning; NVML is tried once, and a library that is missing is reported once; CPU use is
averaged over a second or more and covers the work done since the previous reading."""

from __future__ import annotations

import logging
import os
import time

import psutil
import pytest
import torch

from services.inference import accelerators
from services.inference.accelerators import AcceleratorReader, Nvml
from services.inference.resources import MIN_CPU_WINDOW_SECONDS, CpuMeter

cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")


@cuda
def test_without_cuda_there_is_nothing_to_read_and_nothing_is_logged(caplog):
    caplog.set_level(logging.DEBUG, logger=accelerators.__name__)
    reader = AcceleratorReader()
    assert reader.read() == [] and reader.read() == []
    assert caplog.records == []  # NVML is not even tried: a CPU host's log stays quiet


def test_nvml_is_initialised_once_and_a_missing_library_is_reported_once(caplog):
    caplog.set_level(logging.DEBUG, logger=accelerators.__name__)
    nvml = Nvml()
    ready = [nvml.ready() for _ in range(3)]
    assert len(set(ready)) == 1
    assert nvml.handle("GPU-00000000-0000-0000-0000-000000000000") is None  # no such device, no exception
    warnings = [r.getMessage() for r in caplog.records]
    if ready[0]:  # a host with an NVIDIA driver: nothing to report
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("NVML unavailable"), warnings


def burn(seconds: float) -> None:
    """Spin until `seconds` of wall time and of this process's CPU time have both passed
    (CPU time alone ends early when other threads of the process also run; wall time
    alone ends early in CPU terms when the machine is busy)."""
    wall_end, cpu_end = time.monotonic() + seconds, time.process_time() + seconds
    while time.monotonic() < wall_end or time.process_time() < cpu_end:
        pass


def test_cpu_use_covers_the_work_since_the_previous_reading_over_at_least_a_second():
    meter = CpuMeter(psutil.Process())
    first = meter.read()  # since the process started
    assert first.window_seconds >= time.time() - psutil.Process().create_time() - 1
    assert 0 <= first.cores <= len(os.sched_getaffinity(0)) + 0.1

    time.sleep(MIN_CPU_WINDOW_SECONDS)
    idle = meter.read()
    assert MIN_CPU_WINDOW_SECONDS <= idle.window_seconds < MIN_CPU_WINDOW_SECONDS + 1
    assert idle.cores < 0.3

    burn(1.2)
    busy = meter.read()
    assert busy.window_seconds >= 1.2
    assert busy.cores > 0.5, busy  # one thread spinning for (nearly) the whole window
    assert busy.cpu_seconds - idle.cpu_seconds >= 1.1  # /proc counts in 10 ms ticks

    # A reading right after another measures from the last one old enough, not over
    # the few microseconds between them.
    again = meter.read()
    assert again.window_seconds >= MIN_CPU_WINDOW_SECONDS and again.cores > 0.5
