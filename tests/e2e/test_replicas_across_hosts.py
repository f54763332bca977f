"""Discovery and failover across addresses, not just ports (issue 7): a second
inference replica runs in a network namespace of its own (its own network stack and
address, 10.77.0.2, on a bridge; see tests/support/netns.py), registers itself in the catalog
under that address, and Envoy — in the test's namespace, fed by the gateway —
reaches it across the bridge. Under load, the replica on the loopback address is killed
with SIGKILL: the far replica takes the traffic."""

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
from support.meshes import mesh_settings
from support.metrics import metric
from support.netns import hosts
from support.ports import free_port

POOL = f"inference/{MINILM}"
EMBED = "/infermesh.inference.v1.InferenceService/Embed"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> Iterator[tuple[Mesh, str, int, int]]:
    settings = mesh_settings(models=[MINILM], providers=[])
    logs = tmp_path_factory.mktemp("hosts-logs")
    mesh = Mesh(settings, log_dir=logs, env={"EMBED_COALESCE_IN_FLIGHT": "0"})
    mesh.start()
    far = None
    try:
        mesh.wait_ready()
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
            with open(logs / "inference-far.log", "wb") as out:
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
    finally:
        mesh.stop()


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
    while pool_members(mesh).get(far) != "healthy":
        assert time.monotonic() - started < 60, pool_members(mesh)
        time.sleep(0.2)
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
    after = [o for o in load.outcomes if o.started > killed_at]
    print(
        f"\nacross addresses: far replica healthy in Envoy {joined:.1f}s after start; {len(load.outcomes)} requests, "
        f"{len(load.failed())} failed; after the local replica died {len(after)} requests went to {far}"
    )
    assert not load.failed() and len(after) > 50
    assert metric(metrics, "infermesh_grpc_requests_total", host=address, method=EMBED, code="OK") - served_far >= len(
        after
    )
