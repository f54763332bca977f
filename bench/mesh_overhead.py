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

SENTENCE = "The quick brown fox jumps over the lazy dog."
Call = Callable[[], Awaitable[object]]


def calls(channel_direct: grpc.aio.Channel, channel_front: grpc.aio.Channel, key: str | None) -> dict:
    """For each kind of call: (direct, through the front door) zero-argument coroutines."""
    backend = inference_grpc.InferenceServiceStub(channel_direct)
    router = router_grpc.RouterServiceStub(channel_front)
    metadata = [("authorization", f"Bearer {key}")] if key else []
    # No response cache on the front door: each call goes to the model, as direct ones do.
    metadata.append(("cache-control", "no-cache"))
    one_token = options.GenerationConfig(max_tokens=1)
    return {
        "Embed": (
            lambda: backend.Embed(inference_pb.EmbedRequest(model="all-minilm-l6-v2", inputs=[SENTENCE])),
            lambda: router.Embed(
                router_pb.EmbedRequest(model="all-minilm-l6-v2", inputs=[SENTENCE]), metadata=metadata
            ),
        ),
        "GenerateText (1 token)": (
            lambda: backend.GenerateText(
                inference_pb.GenerateTextRequest(model="gemma-3-270m", prompt=SENTENCE, config=one_token)
            ),
            lambda: router.GenerateText(
                router_pb.GenerateTextRequest(model="gemma-3-270m", prompt=SENTENCE, config=one_token),
                metadata=metadata,
            ),
        ),
    }


async def timed(call: Call) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def sequential(direct: Call, front: Call, n: int) -> tuple[list[float], list[float]]:
    ours, theirs = [], []
    for _ in range(n):
        theirs.append(await timed(direct))
        ours.append(await timed(front))
    return theirs, ours


async def throughput(call: Call, concurrency: int, seconds: float) -> float:
    """Completed calls per second with `concurrency` callers for `seconds`."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(settings, key: str | None, n: int, seconds: float) -> None:
    direct_address = f"{settings.host}:{settings.inference_port}"
    front_address = f"{settings.host}:{settings.front_door_port}"
    async with grpc.aio.insecure_channel(direct_address) as direct, grpc.aio.insecure_channel(front_address) as front:
        for name, (to_backend, through_mesh) in calls(direct, front, key).items():
            for warm in (to_backend, through_mesh):
                for _ in range(20):
                    await warm()
            theirs, ours = await sequential(to_backend, through_mesh, n)
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
            direct16 = await throughput(to_backend, 16, seconds)
            mesh16 = await throughput(through_mesh, 16, seconds)
            print(
                f"    16 concurrent: direct {direct16:7.1f}/s, mesh {mesh16:7.1f}/s = {mesh16 / direct16:5.1%} (goal ≥ 90%)"
            )
            if name == "Embed":
                one = await throughput(through_mesh, 1, seconds)
                many = await throughput(through_mesh, 64, seconds)
                print(f"    mesh at 64 concurrent: {many:7.1f}/s = {many / one:4.1f}× one at a time (goal ≥ 8×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per path")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--auth", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from launcher.mesh import Mesh
    from support.meshes import mesh_settings

    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}); the mesh as `make run` starts it (one inference server)")
    for auth in {"on": [True], "off": [False], "both": [True, False]}[args.auth]:
        settings = mesh_settings(auth=auth)
        with tempfile.TemporaryDirectory() as logs:
            mesh = Mesh(settings, log_dir=Path(logs))
            mesh.start()
            try:
                mesh.wait_ready()
                key = mesh.ensure_admin_key() if auth else None
                print(f"\nauthorization {'on' if auth else 'off'}:")
                asyncio.run(measure(settings, key, args.calls, args.seconds))
            finally:
                mesh.stop()


if __name__ == "__main__":
    main()
