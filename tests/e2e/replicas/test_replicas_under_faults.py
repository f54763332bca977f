"""Two inference replicas behind Envoy, under steady load, with faults (issue 7): a
replica killed with SIGKILL, the same replica restarted, and a replica that hangs
(SIGSTOP: its port stays open, nothing answers). The mesh is the package's (conftest.py),
the launcher's with two replicas of the embedding model registered in the embedded
catalog, Envoy fed by the gateway, and the router calling the model's pool (Envoy
balances among the replicas that have it ready and retries a failed connection on the
other).

Each test prints what it measured (error rate, recovery time); the closing note quotes
them."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.envoy_config.routes import EMBED_PER_TRY_TIMEOUT
from launcher.mesh import Mesh
from support.load import CLIENTS, MINILM, NO_CACHE, Load
from support.meshes import restart_exited
from support.metrics import metric
from support.polling import eventually

EMBED = "/infermesh.inference.v1.InferenceService/Embed"
# What Envoy answers when a circuit breaker refuses a request.
OVERFLOW = "reset reason: overflow"
PER_TRY_TIMEOUT = float(EMBED_PER_TRY_TIMEOUT.removesuffix("s"))


@pytest.fixture(scope="module")
def replicas(replicas: Mesh) -> Mesh:
    """The package's mesh with both replicas running and ready (test_replicas_across_hosts
    stops one and kills the other)."""
    return restart_exited(replicas)


def healthy_in_pool(mesh: Mesh, port: int) -> bool:
    url = f"http://127.0.0.1:{mesh.settings.admin_port}/clusters"
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    return f"inference/{MINILM}::127.0.0.1:{port}::health_flags::healthy" in text


def replica_requests(mesh: Mesh, index: int) -> float:
    port = mesh.settings.inference_ports(index)[1]
    return metric(port, "infermesh_grpc_requests_total", method=EMBED, code="OK")


def test_killing_a_replica_under_load_loses_almost_nothing_and_it_rejoins_after_restart(replicas):
    base = f"http://127.0.0.1:{replicas.settings.front_door_port}"
    victim = replicas.child("inference-1")
    survivor_before = replica_requests(replicas, 0)
    with Load(base) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        time.sleep(5)
        load.until_answered_after(killed_at, 150)  # enough for the survivor's count below
        survivor_during = replica_requests(replicas, 0)
        restarted_at = time.monotonic()
        replicas.restart("inference-1")
        victim_port = replicas.settings.inference_ports(1)[0]
        eventually(
            lambda: healthy_in_pool(replicas, victim_port),
            timeout=60,
            interval=0.2,
            what="the restarted replica rejoining its pool",
        )
        rejoined = time.monotonic() - restarted_at
        back = replica_requests(replicas, 1)
        time.sleep(2)
        serving_again = replica_requests(replicas, 1) - back
    total = len(load.outcomes)
    errors = load.failed()
    rate = len(errors) / total
    print(
        f"\nkill -9 one of two replicas: {total} requests, {len(errors)} errors ({rate:.3%}); rejoined {rejoined:.1f}s after restart"
    )
    assert total > 200
    assert rate <= 0.001, [(o.started - killed_at, o.status, o.body) for o in errors]
    # Requests that started once the replica was dead all succeeded.
    assert not load.failed(after=killed_at + 0.05)
    # While it was down the survivor took the traffic, and after the restart it takes a share again.
    assert survivor_during > survivor_before + 100
    # Rejoining includes the new process importing torch and transformers (3.7 s of a
    # 5.4-5.9 s start alone) and loading MiniLM while the load keeps both cores busy:
    # 8-10 s with this package alone (2-core EPYC), and over 30 s once on CI's slower,
    # shared machine. The wait above (60 s) catches a replica that never comes back;
    # how fast it comes back is printed, not asserted (a timed test flakes).
    assert serving_again > 0


def overflows(mesh: Mesh) -> int:
    """Requests Envoy's circuit breakers refused, over every cluster (the front door's
    router cluster is the first a burst reaches)."""
    url = f"http://127.0.0.1:{mesh.settings.admin_port}/stats?filter=upstream_rq_(active|pending)_overflow"
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    return sum(int(line.rsplit(": ", 1)[1]) for line in text.splitlines() if ": " in line)


def test_a_hung_replica_is_ejected_and_traffic_continues(replicas):
    base = f"http://127.0.0.1:{replicas.settings.front_door_port}"
    victim = replicas.child("inference-1")
    port = replicas.settings.inference_ports(1)[0]
    eventually(lambda: healthy_in_pool(replicas, port), timeout=60, interval=0.2)  # back from the previous test
    with Load(base) as load:
        time.sleep(2)
        stopped_at = time.monotonic()
        os.kill(victim.process.pid, signal.SIGSTOP)  # the port stays open; nothing answers
        try:
            eventually(lambda: not healthy_in_pool(replicas, port), timeout=10, what="the hung replica ejected")
            ejected = time.monotonic()
            time.sleep(4)
            load.until_answered_after(ejected, 51)
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)  # the requests it held now complete
    after = load.answered_after(ejected)
    slow = [o for o in load.outcomes if o.ended - o.started > 1.0]
    print(
        f"\nhung replica: ejected {ejected - stopped_at:.1f}s after SIGSTOP; {len(after)} requests after that, "
        f"{len(load.failed(after=ejected))} failed; {len(slow)} requests it held waited up to "
        f"{max((o.ended - o.started for o in slow), default=0):.1f}s; {len(load.failed())} failed in all"
    )
    assert ejected - stopped_at < 5
    assert len(after) > 50 and not load.failed(after=ejected)
    assert len(slow) <= CLIENTS  # at most the requests in flight on it when it hung


def test_overload_is_refused_fast_by_the_circuit_breaker(replicas):
    base = f"http://127.0.0.1:{replicas.settings.front_door_port}"
    before = overflows(replicas)

    def timed(i: int) -> tuple[int, str, float]:
        started = time.monotonic()
        body = {"model": MINILM, "inputs": [f"burst {i} " + "word " * 200]}
        reply = httpx.post(f"{base}/v1/embed", json=body, headers=NO_CACHE, timeout=30)
        return reply.status_code, reply.text, time.monotonic() - started

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(timed, range(256)))
    refused = [seconds for status, text, seconds in results if status == 503 and OVERFLOW in text]
    answered = [seconds for status, _, seconds in results if status == 200]
    # On a slow machine (CI) a request the breaker admitted can outlast the embedding
    # route's per-try timeout behind the other admitted ones: a 503 too, but not a refusal.
    timed_out = [seconds for status, text, seconds in results if status == 503 and OVERFLOW not in text]
    tripped = overflows(replicas) - before
    print(
        f"\noverload, 64 clients, circuit breaker at 8 per backend: {len(answered)} answered, {len(refused)} refused "
        f"(median {sorted(refused)[len(refused) // 2] * 1000 if refused else 0:.0f} ms), "
        f"answered median {sorted(answered)[len(answered) // 2] * 1000:.0f} ms, {len(timed_out)} timed out"
    )
    assert {status for status, _, _ in results} <= {200, 503}
    assert all(seconds >= PER_TRY_TIMEOUT for seconds in timed_out), timed_out
    assert refused and answered and tripped >= len(refused)
    # Refused at once, not after waiting in a queue behind the admitted requests.
    assert sorted(refused)[len(refused) // 2] < sorted(answered)[len(answered) // 2]
