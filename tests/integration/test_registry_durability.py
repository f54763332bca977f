"""Durability: the registry process is killed with SIGKILL in the middle of a stream of
writes, restarted on the same database, and every write it had acknowledged is there.
Run on SQLite (the embedded default, where the registry process owns the database
file) and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from infermesh.registry.v1 import registry_service_pb2_grpc as pb_grpc
from support.databases import DATABASES, database
from support.polling import eventually_async
from support.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")
WRITERS = 4


@contextmanager
def registry_process(url: str, data_dir: Path, port: int, log: Path):
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "REGISTRY_DATABASE_URL": url,
        "DATA_DIR": str(data_dir),
        "DRAIN_SECONDS": "0",
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.registry"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def until_serving(channel: grpc.aio.Channel, process: subprocess.Popen, log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        assert process.poll() is None, f"the registry exited: {log.read_text()[-2000:]}"
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    await eventually_async(serving, timeout=60, what="the registry SERVING", ignoring=grpc.aio.AioRpcError)


@pytest.mark.parametrize("kind", DATABASES)
async def test_no_acknowledged_write_is_lost_to_kill_9(kind, tmp_path):
    log = tmp_path / "registry.log"
    with database(kind) as (url, data_dir):
        port = free_port()
        acknowledged: list[str] = []
        with registry_process(url, data_dir, port, log) as process:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await until_serving(channel, process, log)
                registry = pb_grpc.RegistryServiceStub(channel)

                async def write(writer: int) -> None:
                    for i in range(10_000):
                        model = res.Model(provider="local", labels={"suite": "durability"})
                        try:
                            created = await registry.CreateModel(
                                pb.CreateModelRequest(model_id=f"dur-{writer}-{i}", model=model), timeout=5
                            )
                        except grpc.aio.AioRpcError:
                            return  # the registry is gone; this write was never acknowledged
                        acknowledged.append(created.name)

                writers = [asyncio.create_task(write(w)) for w in range(WRITERS)]
                while len(acknowledged) < 150:
                    await asyncio.sleep(0.01)
                os.kill(process.pid, signal.SIGKILL)  # mid-stream: writes are in flight
                await asyncio.gather(*writers)
                assert process.wait(10) == -signal.SIGKILL

        with registry_process(url, data_dir, port, log) as process:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await until_serving(channel, process, log)
                registry = pb_grpc.RegistryServiceStub(channel)
                stored = await registry.ListModels(
                    pb.ListModelsRequest(filter='labels.suite = "durability"', page_size=1000)
                )
                names = {m.name for m in stored.models}
                assert len(acknowledged) >= 150
                assert set(acknowledged) <= names, f"lost: {sorted(set(acknowledged) - names)[:10]}"
                assert len(names) - len(acknowledged) <= WRITERS  # at most the writes in flight
                # The feed has every acknowledged creation too.
                feed = []
                async for change in registry.WatchChanges(pb.WatchChangesRequest(), timeout=3):
                    feed.append(change.name)
                    if set(acknowledged) <= set(feed):
                        break
                assert set(acknowledged) <= set(feed)
