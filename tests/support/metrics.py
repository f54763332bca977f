"""Reading a service's Prometheus metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric(port: int, name: str, host: str = "127.0.0.1", **labels: str) -> float:
    """A Prometheus sample from a service's /metrics, summed over the series that carry
    `labels` (0 when there is none yet)."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
