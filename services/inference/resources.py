"""What the inference server uses of its host, read when asked (GetServerResources):
the process's CPU, memory and threads, the machine's memory, the models' memory and the
accelerators (services/inference/accelerators.py).

Prometheus needs none of this module for the process's own figures: prometheus_client's
default process collector already exports `process_cpu_seconds_total` and
`process_resident_memory_bytes` on every service's /metrics (from /proc, on Linux)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from services.inference.accelerators import AcceleratorReader, AcceleratorReading

# The shortest span CPU use is averaged over: shorter ones are mostly noise.
MIN_CPU_WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class CpuUse:
    cores: float  # CPU seconds per second of wall time over the window
    window_seconds: float
    cpu_seconds: float  # since the process started


class CpuMeter:
    """A process's CPU use, averaged since the latest earlier reading at least
    MIN_CPU_WINDOW_SECONDS old (since the process started when there is none).

    Each reading is kept until a later one is old enough to measure from instead, so
    callers asking at any pace, together or not, get windows of a second or more, and a
    reading taken after a burst of work covers that work."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._lock = threading.Lock()
        self._readings: deque[tuple[float, float]] = deque()  # (monotonic time, CPU seconds), oldest first

    def read(self) -> CpuUse:
        times = self._process.cpu_times()
        used, now = times.user + times.system, time.monotonic()
        with self._lock:
            readings = self._readings
            while len(readings) > 1 and now - readings[1][0] >= MIN_CPU_WINDOW_SECONDS:
                readings.popleft()
            if readings and now - readings[0][0] >= MIN_CPU_WINDOW_SECONDS:
                since, used_then = readings[0]
            else:
                since, used_then = now - (time.time() - self._process.create_time()), 0.0
            readings.append((now, used))
        window = max(now - since, 1e-6)
        return CpuUse(max(used - used_then, 0.0) / window, window, used)


@dataclass(frozen=True)
class ResourceReading:
    read_time: float  # wall-clock seconds
    cpu: CpuUse
    cpu_count: int
    resident_memory_bytes: int
    thread_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    device: str
    model_memory_bytes: int
    accelerators: list[AcceleratorReading]


class ResourceMonitor:
    """Reads this process's resources; `model_memory` is what the loaded models hold."""

    def __init__(self, device: str, model_memory: Callable[[], int], accelerators: AcceleratorReader) -> None:
        self._process = psutil.Process()
        self._cpu = CpuMeter(self._process)
        self._device = device
        self._model_memory = model_memory
        self._accelerators = accelerators

    def read(self) -> ResourceReading:
        """Blocking (NVML and /proc reads take milliseconds): call it off the event loop."""
        machine = psutil.virtual_memory()
        with self._process.oneshot():
            rss, threads = self._process.memory_info().rss, self._process.num_threads()
        return ResourceReading(
            read_time=time.time(),
            cpu=self._cpu.read(),
            cpu_count=len(os.sched_getaffinity(0)),
            resident_memory_bytes=rss,
            thread_count=threads,
            memory_total_bytes=machine.total,
            memory_available_bytes=machine.available,
            device=self._device,
            model_memory_bytes=self._model_memory(),
            accelerators=self._accelerators.read(),
        )
