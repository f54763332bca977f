"""Discovery and failover across addresses, not just ports (issue 7): a second
inference replica runs in a network namespace of its own (its own network stack and
address, 10.77.0.2, on a bridge; see tests/support/netns.py), registers itself in the
catalog under that address, and Envoy — in the test's namespace, fed by the gateway —
reaches it across the bridge. Under load, the replica on the loopback address is killed
with SIGKILL: the far replica takes the traffic. (The mesh is the package's, conftest.py,
with its second local replica stopped for these tests.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from launcher.mesh import Mesh
from support.load import MINILM, Load, embed
from support.meshes import restart_exited
from support.metrics import metric
from support.netns import hosts
from support.polling import eventually
from support.ports import free_port

POOL = f"inference/{MINILM}"
EMBED = "/infermesh.inference.v1.InferenceService/Embed"


@pytest.fixture(scope="module")
def two_hosts(replicas: Mesh) -> Iterator[tuple[Mesh, str, int, int]]:
    """The package's mesh with one replica on the loopback address (the second is stopped
    and leaves the catalog and Envoy's pool, as any replica that stops does), and a
    replica on another address beside it."""
    mesh = restart_exited(replicas)
    second = mesh.child("inference-1").process
    second.send_signal(signal.SIGTERM)
    second.wait(60)
    local = f"127.0.0.1:{mesh.settings.inference_port}"
    eventually(lambda: pool_members(mesh), until=lambda members: members.keys() == {local}, timeout=30)
    with hosts(1) as (host,):
        port, metrics = free_port(), free_port()
        env = {
            **mesh.child("inference-0").env,
            "GRPC_HOST": host.address,
            "GRPC_PORT": str(port),
            "METRICS_PORT": str(metrics),
            "INSTANCE_NAME": "inference-far",
        }
        argv = host.command(mesh.child("inference-0").argv)
        with open(mesh.log_dir / "inference-far.log", "wb") as out:
            far = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield mesh, host.address, port, metrics
        finally:
            far.send_signal(signal.SIGTERM)
            try:
                far.wait(20)
            except subprocess.TimeoutExpired:
                far.kill()
                far.wait()


def pool_members(mesh: Mesh) -> dict[str, str]:
    """host:port → health flags of the pool's members, as Envoy sees them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{mesh.settings.admin_port}/clusters", timeout=2).read().decode()
    members = {}
    for line in text.splitlines():
        parts = line.split("::")
        if parts[0] == POOL and len(parts) == 4 and parts[2] == "health_flags":
            members[parts[1]] = parts[3]
    return members


def test_a_replica_on_another_address_is_discovered_and_takes_over_when_the_local_one_dies(two_hosts):
    mesh, address, port, metrics = two_hosts
    far = f"{address}:{port}"
    started = time.monotonic()
    eventually(
        lambda: pool_members(mesh), until=lambda members: members.get(far) == "healthy", timeout=60, interval=0.2
    )
    joined = time.monotonic() - started
    entry = yaml.safe_load((mesh.catalog_dir / "inference-far.yaml").read_text())
    assert (entry["host"], entry["port"], entry["models"]) == (address, port, [MINILM])
    assert pool_members(mesh).keys() == {far, f"127.0.0.1:{mesh.settings.inference_port}"}

    base = f"http://127.0.0.1:{mesh.settings.front_door_port}"
    assert embed(base, "warm") == 200
    served_far = metric(metrics, "infermesh_grpc_requests_total", host=address, method=EMBED, code="OK")
    with Load(base) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(mesh.child("inference-0").process.pid, signal.SIGKILL)
        time.sleep(4)
        load.until_answered_after(killed_at, 51)
    after = load.answered_after(killed_at)
    print(
        f"\nacross addresses: far replica healthy in Envoy {joined:.1f}s after start; {len(load.outcomes)} requests, "
        f"{len(load.failed())} failed; after the local replica died {len(after)} requests went to {far}"
    )
    assert not load.failed() and len(after) > 50, [(o.started - killed_at, o.status, o.body) for o in load.failed()]
    assert metric(metrics, "infermesh_grpc_requests_total", host=address, method=EMBED, code="OK") - served_far >= len(
        after
    )
