"""`make bench`: what the mesh itself costs per call, measured against the direct path.

The same gRPC call sent straight to the inference server and through the front door
(Envoy → ext_authz → rate limit service → router → Envoy → inference server), on a mesh
started by the launcher as `make run` starts it, with authorization on and then off:

- sequential, interleaved (direct, front door, direct, ...): the latency the mesh adds,
  p50 and p99 (the difference of the two paths' percentiles);
- 16 concurrent callers: the front door's calls/s as a share of the direct path's;
- embeddings at 64 concurrent callers through the front door: calls/s divided by the
  one-at-a-time rate.

for Embed (one sentence) and a 1-token GenerateText. Issue 19's goals, printed beside the
figures: ≤ 1 ms added at p50, ≤ 5 ms at p99, ≥ 90% of direct throughput at 16, ≥ 8× at 64.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)
from stats import percentile  # noqa: E402

from infermesh.inference.v1 import generation_options_pb2 as options  # noqa: E402
from infermesh.inference.v1 import inference_service_pb2 as inference_pb  # noqa: E402
from infermesh.inference.v1 import inference_service_pb2_grpc as inference_grpc  # noqa: E402
from infermesh.router.v1 import router_messages_pb2 as router_pb  # noqa: E402
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc  # noqa: E402
from services.runtime.catalog import BACKEND_HEADER  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog."
# The paths a call can take, each wrapping the one before it (the first is "direct", the
# inference server itself), and what each adds.
HOPS = {
    "envoy": "Envoy's mesh listener (router -> backend hop)",
    "router": "the router (its own hop; with auth on, its check)",
    "front door": "the front door (Envoy)",
}
Call = Callable[[], Awaitable[object]]


def calls(channels: dict[str, grpc.aio.Channel], key: str | None) -> dict[str, dict[str, Call]]:
    """For each kind of call, one zero-argument coroutine per path (PATHS)."""
    backend = inference_grpc.InferenceServiceStub(channels["direct"])
    pooled = inference_grpc.InferenceServiceStub(channels["envoy"])
    router = router_grpc.RouterServiceStub(channels["router"])
    front = router_grpc.RouterServiceStub(channels["front door"])
    metadata = [("authorization", f"Bearer {key}")] if key else []
    # No response cache on the front door: each call goes to the model, as direct ones do.
    metadata.append(("cache-control", "no-cache"))
    one_token = options.GenerationConfig(max_tokens=1)
    embed = inference_pb.EmbedRequest(model="all-minilm-l6-v2", inputs=[SENTENCE])
    generate = inference_pb.GenerateTextRequest(model="gemma-3-270m", prompt=SENTENCE, config=one_token)
    routed_embed = router_pb.EmbedRequest(model="all-minilm-l6-v2", inputs=[SENTENCE])
    routed_generate = router_pb.GenerateTextRequest(model="gemma-3-270m", prompt=SENTENCE, config=one_token)

    def pool(model: str) -> list[tuple[str, str]]:
        # What the router sends Envoy's mesh listener: the model's pool, by header.
        return [(BACKEND_HEADER, f"inference/{model}")]

    return {
        "Embed": {
            "direct": lambda: backend.Embed(embed),
            "envoy": lambda: pooled.Embed(embed, metadata=pool(embed.model)),
            "router": lambda: router.Embed(routed_embed, metadata=metadata),
            "front door": lambda: front.Embed(routed_embed, metadata=metadata),
        },
        "GenerateText (1 token)": {
            "direct": lambda: backend.GenerateText(generate),
            "envoy": lambda: pooled.GenerateText(generate, metadata=pool(generate.model)),
            "router": lambda: router.GenerateText(routed_generate, metadata=metadata),
            "front door": lambda: front.GenerateText(routed_generate, metadata=metadata),
        },
    }


async def timed(call: Call) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def sequential(paths: dict[str, Call], n: int) -> dict[str, list[float]]:
    """n calls along each path, interleaved (one of each in turn), so that a change in
    the machine's load touches every path alike."""
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, call in paths.items():
            seconds[name].append(await timed(call))
    return seconds


async def throughput(call: Call, concurrency: int, seconds: float, cpu: CpuMeter | None = None) -> float:
    """Completed calls per second with `concurrency` callers for `seconds` (and, given a
    meter, the CPU each process spent per call)."""
    done = 0
    if cpu is not None:
        cpu.start()
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    if cpu is not None:
        cpu.stop(done)
    return done / (time.perf_counter() - started)


class CpuMeter:
    """CPU time (user + system, from /proc) each of the mesh's processes and this one
    spent per call while a throughput run lasted: what the mesh costs the machine per
    call, which is what concurrent throughput runs out of on 2 cores."""

    def __init__(self, processes: dict[str, int]) -> None:
        self._processes = {**processes, "client (this benchmark)": os.getpid()}
        self._before: dict[str, float] = {}
        self.per_call: dict[str, float] = {}

    def _used(self) -> dict[str, float]:
        used = {}
        for name, pid in self._processes.items():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return used

    def start(self) -> None:
        self._before = self._used()

    def stop(self, calls: int) -> None:
        after = self._used()
        self.per_call = {name: (after[name] - self._before[name]) / max(calls, 1) for name in after}

    def report(self, label: str) -> str:
        shown = sorted(((ms * 1000, name) for name, ms in self.per_call.items() if ms * 1000 >= 0.05), reverse=True)
        total = sum(ms for ms, _ in shown)
        return f"      {label}: {total:.2f} ms = " + ", ".join(f"{name} {ms:.2f}" for ms, name in shown)


async def measure(
    settings, processes: dict[str, int], key: str | None, n: int, seconds: float, only: str | None
) -> None:
    addresses = {
        "direct": settings.inference_port,
        "envoy": settings.mesh_port,
        "router": settings.router_port,
        "front door": settings.front_door_port,
    }
    async with contextlib.AsyncExitStack() as stack:
        channels = {
            path: await stack.enter_async_context(grpc.aio.insecure_channel(f"{settings.host}:{port}"))
            for path, port in addresses.items()
        }
        for name, paths in calls(channels, key).items():
            if only and not name.startswith(only):
                continue
            for warm in paths.values():
                for _ in range(20):
                    await warm()
            took = await sequential(paths, n)
            theirs, ours = took["direct"], took["front door"]
            added50 = (statistics.median(ours) - statistics.median(theirs)) * 1000
            added99 = (percentile(ours, 0.99) - percentile(theirs, 0.99)) * 1000
            print(f"  {name}, {n} sequential each, interleaved:")
            print(
                f"    direct p50 {statistics.median(theirs) * 1000:6.2f} ms  p99 {percentile(theirs, 0.99) * 1000:6.2f} ms"
            )
            print(
                f"    mesh   p50 {statistics.median(ours) * 1000:6.2f} ms  p99 {percentile(ours, 0.99) * 1000:6.2f} ms"
            )
            print(f"    added  p50 {added50:6.2f} ms (goal ≤ 1)   p99 {added99:6.2f} ms (goal ≤ 5)")
            print("    where it goes (p50 of each path minus the path it wraps):")
            for inner, outer in itertools.pairwise(took):
                extra = (statistics.median(took[outer]) - statistics.median(took[inner])) * 1000
                print(f"      {HOPS[outer]:<52} {extra:6.2f} ms")
            direct_cpu, mesh_cpu = CpuMeter(processes), CpuMeter(processes)
            direct16 = await throughput(paths["direct"], 16, seconds, direct_cpu)
            mesh16 = await throughput(paths["front door"], 16, seconds, mesh_cpu)
            print(
                f"    16 concurrent: direct {direct16:7.1f}/s, mesh {mesh16:7.1f}/s = {mesh16 / direct16:5.1%} (goal ≥ 90%)"
            )
            print("    CPU per call at 16 concurrent, by process (ms):")
            print(direct_cpu.report("direct"))
            print(mesh_cpu.report("mesh  "))
            if name == "Embed":
                one = await throughput(paths["front door"], 1, seconds)
                many = await throughput(paths["front door"], 64, seconds)
                print(f"    mesh at 64 concurrent: {many:7.1f}/s = {many / one:4.1f}× one at a time (goal ≥ 8×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per path")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--auth", choices=["on", "off", "both"], default="both")
    parser.add_argument("--only", choices=["Embed", "GenerateText"], help="measure one kind of call")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from support.meshes import mesh_running, mesh_settings

    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}); the mesh as `make run` starts it (one inference server)")
    for auth in {"on": [True], "off": [False], "both": [True, False]}[args.auth]:
        settings = mesh_settings(auth=auth)
        with tempfile.TemporaryDirectory() as logs, mesh_running(settings, Path(logs)) as mesh:
            key = mesh.ensure_admin_key() if auth else None
            print(f"\nauthorization {'on' if auth else 'off'}:")
            processes = {child.name: child.process.pid for child in mesh.children}
            asyncio.run(measure(settings, processes, key, args.calls, args.seconds, args.only))


if __name__ == "__main__":
    main()
