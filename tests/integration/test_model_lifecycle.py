"""Model lifecycle on a real inference server (port 0): load and unload as long-running
operations, lazy loading, draining, LRU eviction under a memory budget, idle unload,
per-model health, and no memory leak across load/unload cycles."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace

import grpc
import psutil
import pytest
from google.longrunning import operations_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh.inference.v1 import model_service_pb2 as model_pb
from infermesh.inference.v1 import model_service_pb2_grpc as model_grpc
from services.inference.app import model_health_name
from services.runtime.operations import OperationsStub
from support.polling import eventually_async
from support.ports import free_port
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


async def run(server, operation: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await server.operations.WaitOperation(operations_pb2.WaitOperationRequest(name=operation.name), timeout=300)
    assert done.done and not done.HasField("error"), done.error
    return done


async def state(server, model: str) -> int:
    return (await server.models.GetModel(model_pb.GetModelRequest(model=model))).state


async def serving(server, model: str) -> bool:
    reply = await server.health.Check(health_pb2.HealthCheckRequest(service=model_health_name(model)))
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unload_and_load_are_operations_and_requests_load_lazily():
    async with inference_server(models=[MINILM]) as server:
        status = await server.models.GetModel(model_pb.GetModelRequest(model=MINILM))
        assert status.state == types.MODEL_STATE_READY and status.memory_bytes > 10 * 2**20
        assert status.device == "cpu" and await serving(server, MINILM)

        operation = await server.models.UnloadModel(model_pb.UnloadModelRequest(model=MINILM))
        assert operation.name.startswith("operations/")
        done = await run(server, operation)
        unloaded = types.Model()
        done.response.Unpack(unloaded)
        assert unloaded.state == types.MODEL_STATE_UNLOADED and unloaded.memory_bytes == 0
        metadata = model_pb.ModelOperationMetadata()
        done.metadata.Unpack(metadata)
        assert metadata.verb == "unload" and metadata.progress_percent == 100 and metadata.HasField("end_time")
        assert not await serving(server, MINILM)  # Envoy and Consul stop routing it here

        reply = await server.inference.Embed(pb.EmbedRequest(model=MINILM, inputs=["loaded on demand"]))
        assert len(reply.embeddings[0].values) == 384
        assert await state(server, MINILM) == types.MODEL_STATE_READY and await serving(server, MINILM)

        done = await run(server, await server.models.UnloadModel(model_pb.UnloadModelRequest(model=MINILM)))
        done = await run(server, await server.models.LoadModel(model_pb.LoadModelRequest(model=MINILM)))
        loaded = types.Model()
        done.response.Unpack(loaded)
        assert loaded.state == types.MODEL_STATE_READY and loaded.load_seconds > 0

        listed = await server.operations.ListOperations(operations_pb2.ListOperationsRequest())
        assert len(listed.operations) == 3

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.models.LoadModel(model_pb.LoadModelRequest(model="no-such-model"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unload_drains_in_flight_requests_and_later_requests_still_succeed():
    async with inference_server(models=[GEMMA]) as server:
        stream = server.inference.StreamGenerateText(
            pb.GenerateTextRequest(
                model=GEMMA, prompt="Once upon a time", config=options.GenerationConfig(max_tokens=40)
            )
        )
        await stream.read()
        operation = await server.models.UnloadModel(model_pb.UnloadModelRequest(model=GEMMA))
        await asyncio.sleep(0.2)
        assert await state(server, GEMMA) == types.MODEL_STATE_DRAINING
        late = asyncio.ensure_future(
            server.inference.GenerateText(
                pb.GenerateTextRequest(model=GEMMA, prompt="Hello", config=options.GenerationConfig(max_tokens=3))
            )
        )
        last = await stream.read()
        while (chunk := await stream.read()) is not grpc.aio.EOF:
            last = chunk
        assert last.usage.output_tokens == 40  # the in-flight stream was not cut
        await run(server, operation)
        assert (await late).usage.output_tokens == 3  # it waited for the unload, then reloaded the model


async def test_a_memory_budget_evicts_the_least_recently_used_model():
    # Gemma in bf16 is 511 MiB of weights and MiniLM 43 MiB: a 540 MiB budget holds one of them.
    async with inference_server(models=[MINILM], available_models=[GEMMA], memory_budget=540 * 2**20) as server:
        evictions = REGISTRY.get_sample_value(
            "infermesh_inference_evictions_total", {"model": MINILM, "cause": "evicted"}
        )
        reply = await server.inference.GenerateText(
            pb.GenerateTextRequest(model=GEMMA, prompt="Hi", config=options.GenerationConfig(max_tokens=2))
        )
        assert reply.usage.output_tokens == 2
        assert await state(server, MINILM) == types.MODEL_STATE_UNLOADED
        after = REGISTRY.get_sample_value("infermesh_inference_evictions_total", {"model": MINILM, "cause": "evicted"})
        assert (after or 0) == (evictions or 0) + 1
        await server.inference.Embed(pb.EmbedRequest(model=MINILM, inputs=["and back"]))
        assert await state(server, GEMMA) == types.MODEL_STATE_UNLOADED
        assert server.app.repository.memory_used() <= 540 * 2**20


async def test_idle_models_are_unloaded():
    async with inference_server(models=[MINILM], idle_unload_seconds=0.5) as server:

        async def unloaded() -> bool:
            return await state(server, MINILM) == types.MODEL_STATE_UNLOADED

        await eventually_async(unloaded, timeout=10, what=f"{MINILM} unloaded when idle")


async def test_twenty_load_unload_cycles_do_not_leak_memory(tmp_path):
    """Measured on an inference server process of its own, as it runs in the mesh: in
    the test process, threads and allocator arenas left by earlier tests (the HTTP
    stand-ins start a thread per request) made the figure depend on the test order
    (seen: +1% alone, +17% after the end-to-end tests)."""
    port = free_port()
    env = {**os.environ, "GRPC_PORT": str(port), "MODELS": MINILM, "AVAILABLE_MODELS": "", "DRAIN_SECONDS": "0"}
    log = open(tmp_path / "inference.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env, stdout=log, stderr=log)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            server = SimpleNamespace(
                models=model_grpc.ModelServiceStub(channel),
                operations=OperationsStub(channel),
                inference=pb_grpc.InferenceServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
            )

            async def ready() -> bool:
                assert process.poll() is None, (tmp_path / "inference.log").read_text()[-2000:]
                return await serving(server, MINILM)

            await eventually_async(ready, timeout=60, what=f"{MINILM} SERVING", ignoring=grpc.aio.AioRpcError)
            resident = psutil.Process(process.pid)

            async def cycle() -> None:
                await run(server, await server.models.UnloadModel(model_pb.UnloadModelRequest(model=MINILM)))
                await run(server, await server.models.LoadModel(model_pb.LoadModelRequest(model=MINILM)))
                await server.inference.Embed(pb.EmbedRequest(model=MINILM, inputs=["cycle"]))

            # Let allocator pools and caches reach their steady size first: measured over
            # 50 cycles, RSS rose 508 → 538 MB in the first 15 and by 5 MB in the 35 after
            # (threads constant); two warm-up cycles left that settling inside the window.
            for _ in range(10):
                await cycle()
            baseline = resident.memory_info().rss
            for _ in range(20):
                await cycle()
            grown = resident.memory_info().rss / baseline
        assert grown < 1.10, f"resident memory grew {100 * (grown - 1):.1f}% over 20 cycles"
    finally:
        process.terminate()
        process.wait(30)
        log.close()
