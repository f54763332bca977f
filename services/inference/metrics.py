"""The inference server's Prometheus metrics (the runtime kit adds per-call counts).

The process's CPU and resident memory are not here: prometheus_client's default process
collector exports `process_cpu_seconds_total` and `process_resident_memory_bytes` on
every service's /metrics already (tests/integration/test_server_resources.py checks)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.inference.accelerators import AcceleratorReader, shared_reader

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

QUEUE_DEPTH = Gauge(
    "infermesh_inference_queue_depth",
    "Requests (generation) or inputs (embeddings) admitted and not yet done.",
    ["model"],
)
BATCH_SIZE = Histogram(
    "infermesh_inference_batch_size", "Sequences or inputs in each forward pass.", ["model"], buckets=BATCH_SIZES
)
TIME_TO_FIRST_TOKEN = Histogram(
    "infermesh_inference_time_to_first_token_seconds",
    "From admission to the first generated text.",
    ["model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "infermesh_inference_time_per_output_token_seconds",
    "Mean time between generated tokens after the first, per request.",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
TOKENS = Counter(
    "infermesh_inference_tokens_total", "Tokens processed, by direction (input, output).", ["model", "direction"]
)
REJECTED = Counter("infermesh_inference_rejected_total", "Requests refused because the queue was full.", ["model"])
LOAD_SECONDS = Gauge(
    "infermesh_inference_model_load_seconds", "Time the last load (and warmup) of a model took.", ["model"]
)
MODEL_MEMORY = Gauge(
    "infermesh_inference_model_memory_bytes",
    "Memory a model holds (CUDA allocations on GPU, weights on CPU).",
    ["model"],
)
EVICTIONS = Counter(
    "infermesh_inference_evictions_total", "Models unloaded to make room or after idling.", ["model", "cause"]
)


class AcceleratorCollector(Collector):
    """Each CUDA device's utilization and memory, read at every scrape (no series on a
    host without one; a figure that cannot be read is left out, not reported as 0)."""

    def __init__(self, reader: AcceleratorReader) -> None:
        self.reader = reader

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())  # names only: registering reads no device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = self.reader.read()
        if not readings:
            return
        utilization, used, total = families = self._families()
        for reading in readings:
            if reading.utilization is not None:
                utilization.add_metric([reading.device], reading.utilization)
            if reading.memory_used_bytes is not None:
                used.add_metric([reading.device], reading.memory_used_bytes)
            total.add_metric([reading.device], reading.memory_total_bytes)
        yield from (family for family in families if family.samples)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "infermesh_accelerator_utilization_ratio",
                "Fraction of the last sample period a kernel ran on the device (NVML).",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "infermesh_accelerator_memory_used_bytes",
                "Memory in use on the device, by every process on it.",
                labels=["device"],
            ),
            GaugeMetricFamily("infermesh_accelerator_memory_total_bytes", "The device's memory.", labels=["device"]),
        )


@functools.cache
def export_accelerators() -> None:
    """Register the accelerator collector in the default registry, once per process
    however many servers it runs (tests run several)."""
    REGISTRY.register(AcceleratorCollector(shared_reader()))
