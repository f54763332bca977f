"""Resource monitoring on a real inference server, in-process on port 0 with MiniLM:
GetServerResources over gRPC reports the process, the machine, the models and (none on
this CPU host) the accelerators, and its CPU figure rises with work; /metrics has the
process's CPU and memory from prometheus_client and accelerator series only on GPU hosts."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest
import pytest_asyncio
import torch
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import model_service_pb2 as model_pb
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
MINILM = "all-minilm-l6-v2"
MB = 2**20


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    async with inference_server(models=[MINILM], available_models=[]) as running:
        yield running


def scrape() -> dict[str, list]:
    """What /metrics serves (the same registry and exposition): samples by series name."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


async def test_the_process_the_machine_and_the_models_are_reported(server):
    resources = await server.models.GetServerResources(model_pb.GetServerResourcesRequest())
    machine = psutil.virtual_memory().total
    assert 50 * MB < resources.resident_memory_bytes < machine
    assert resources.memory_total_bytes == machine
    assert 0 < resources.memory_available_bytes <= machine
    assert resources.cpu_count == len(os.sched_getaffinity(0)) >= 1
    assert resources.thread_count >= 2
    assert resources.cpu_cores_used >= 0 and resources.cpu_window_seconds > 0 and resources.cpu_seconds > 0
    assert resources.device == "cpu"
    model = await server.models.GetModel(model_pb.GetModelRequest(model=MINILM))
    assert resources.model_memory_bytes == model.memory_bytes > 0
    assert abs(resources.read_time.ToSeconds() - time.time()) < 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")
async def test_a_cpu_host_has_no_accelerators_in_the_api_or_the_metrics(server):
    resources = await server.models.GetServerResources(model_pb.GetServerResourcesRequest())
    assert list(resources.accelerators) == []
    assert not [name for name in scrape() if name.startswith("infermesh_accelerator_")]


async def test_the_process_cpu_and_memory_metrics_come_from_prometheus_client(server):
    families = scrape()
    (rss,) = families["process_resident_memory_bytes"]
    assert rss.value > 50 * MB
    (cpu,) = families["process_cpu_seconds_total"]
    assert cpu.value > 0


async def test_cpu_use_rises_after_a_burst_of_embeddings(server):
    models, inference = server.models, server.inference
    await models.GetServerResources(model_pb.GetServerResourcesRequest())
    await asyncio.sleep(1.5)  # a quiet window
    quiet = await models.GetServerResources(model_pb.GetServerResourcesRequest())

    texts = [f"sentence number {i} about the weather in a town by the sea" for i in range(64)]
    end = time.monotonic() + 3
    while time.monotonic() < end:
        await asyncio.gather(*(inference.Embed(pb.EmbedRequest(model=MINILM, inputs=texts)) for _ in range(4)))
    busy = await models.GetServerResources(model_pb.GetServerResourcesRequest())

    assert busy.cpu_window_seconds >= 3  # since the quiet reading, covering the burst
    assert busy.cpu_seconds - quiet.cpu_seconds >= 1
    assert busy.cpu_cores_used > quiet.cpu_cores_used + 0.3, (quiet, busy)
    assert busy.cpu_cores_used <= busy.cpu_count + 0.1
