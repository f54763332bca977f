"""Check resource monitoring on a GPU host, in one command.

Starts an inference server (`python -m services.inference`, DEVICE=cuda by default)
serving one embedding model, embeds for a few seconds while scraping its /metrics, then
prints GetServerResources and the infermesh_accelerator_* series and checks them against
torch, nvidia-smi and NVML. Last, a fresh process reads the accelerators to check that a
reading creates no CUDA context. Exits 0 when every check passed.

    .venv/bin/python scripts/check_gpu_resources.py                  # MiniLM from its package
    python3 scripts/check_gpu_resources.py --model-dir DIR           # any sentence-transformers dir;
                                                                     # random weights from its config.json if it has none
    .venv/bin/python scripts/check_gpu_resources.py --device cpu     # the same on a CPU host (no accelerators)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from infermesh.inference.v1 import model_service_pb2 as model_pb
from infermesh.inference.v1 import model_service_pb2_grpc as model_grpc

MODEL = "all-minilm-l6-v2"
SERIES = ("infermesh_accelerator_utilization_ratio", "infermesh_accelerator_memory_used_bytes")
NO_CONTEXT_PROBE = """
import os, json, torch, pynvml
from services.inference.accelerators import AcceleratorReader
readings = AcceleratorReader().read()
pynvml.nvmlInit()
pids = set()
for r in readings:
    handle = pynvml.nvmlDeviceGetHandleByUUID(r.uuid)
    pids |= {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
print(json.dumps({"pid": os.getpid(), "devices": len(readings), "pids_with_a_context": sorted(pids)}))
"""

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_weights(model_dir: Path) -> None:
    """Resource figures need a model on the device, not a trained one."""
    if any(model_dir.glob("*.safetensors")):
        return
    from transformers import AutoConfig, AutoModel

    print(f"writing random weights from {model_dir / 'config.json'}")
    AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)


def scrape(port: int) -> dict[str, dict[str, float]]:
    """infermesh_accelerator_* and process_* samples: {series name: {device label: value}}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("infermesh_accelerator_", "process_")):
                found.setdefault(sample.name, {})[sample.labels.get("device", "")] = sample.value
    return found


def wait_serving(channel: grpc.Channel, server: subprocess.Popen, timeout: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the inference server exited with {server.returncode}")
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    sys.exit(f"the inference server was not SERVING after {timeout:.0f}s")


def burst(channel: grpc.Channel, model: str, metrics_port: int, seconds: float) -> dict[str, float]:
    """Embed for `seconds` from 4 threads; the highest accelerator figures scraped meanwhile."""
    stub = pb_grpc.InferenceServiceStub(channel)
    texts = [f"sentence number {i} about the weather in a town by the sea" for i in range(128)]
    end = time.monotonic() + seconds
    done = [0]

    def embed() -> None:
        while time.monotonic() < end:
            stub.Embed(pb.EmbedRequest(model=model, inputs=texts), timeout=60)
            done[0] += len(texts)

    workers = [threading.Thread(target=embed) for _ in range(4)]
    for worker in workers:
        worker.start()
    highest: dict[str, float] = {}
    while any(w.is_alive() for w in workers):
        for name, by_device in scrape(metrics_port).items():
            for value in by_device.values():
                highest[name] = max(highest.get(name, 0.0), value)
        time.sleep(0.25)
    print(f"embedded {done[0]} texts in {seconds:.0f}s")
    return highest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="DEVICE for the server (default cuda)")
    parser.add_argument("--model-dir", type=Path, help="serve this embedding model dir instead of MiniLM's package")
    parser.add_argument("--seconds", type=float, default=6, help="length of the embedding burst")
    parser.add_argument("--ready-timeout", type=float, default=300)
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")

    grpc_port, metrics_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="infermesh-gpu-check-"))
    env = {
        **os.environ,
        "DEVICE": args.device,
        "MODELS": MODEL,
        "AVAILABLE_MODELS": "",
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(metrics_port),
        "DATA_DIR": str(data_dir),
        "LOG_JSON": "false",
        "HF_HUB_OFFLINE": "1",
        "DRAIN_SECONDS": "0",
    }
    model_id = MODEL
    if args.model_dir is not None:
        random_weights(args.model_dir)
        model_id = env["MODELS"] = "gpu-check-embedder"
        path = str(args.model_dir.resolve())
        env["MODEL_SPECS"] = json.dumps(
            [{"id": model_id, "runtime": "transformers", "task": "embedding", "path": path}]
        )

    server = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        wait_serving(channel, server, args.ready_timeout)
        models = model_grpc.ModelServiceStub(channel)
        models.GetServerResources(model_pb.GetServerResourcesRequest(), timeout=30)
        time.sleep(1.1)
        quiet = models.GetServerResources(model_pb.GetServerResourcesRequest(), timeout=30)
        highest = burst(channel, model_id, metrics_port, args.seconds)
        after = models.GetServerResources(model_pb.GetServerResourcesRequest(), timeout=30)
        series = scrape(metrics_port)
        model = models.GetModel(model_pb.GetModelRequest(model=model_id), timeout=30)

        print("\nGetServerResources after the burst:")
        print(json.dumps(MessageToDict(after, preserving_proto_field_name=True), indent=2))
        print("\n/metrics after the burst (accelerator series; process ones for comparison):")
        for name, by_device in sorted(series.items()):
            if name.startswith("infermesh_accelerator_") or name in (
                "process_resident_memory_bytes",
                "process_cpu_seconds_total",
            ):
                for device, value in sorted(by_device.items()):
                    print(f"  {name}{{device={device!r}}} {value:.6g}" if device else f"  {name} {value:.6g}")
        print("highest while embedding:", {k: v for k, v in highest.items() if k in SERIES})

        print("\nchecks:")
        check(
            after.cpu_cores_used > quiet.cpu_cores_used,
            f"CPU rose with the burst: {quiet.cpu_cores_used:.2f} -> {after.cpu_cores_used:.2f} cores",
        )
        check(
            after.model_memory_bytes == model.memory_bytes > 0, f"models' memory {after.model_memory_bytes >> 20} MiB"
        )
        check(
            abs(series["process_resident_memory_bytes"][""] - after.resident_memory_bytes)
            < 0.2 * after.resident_memory_bytes,
            "RSS in the API and in process_resident_memory_bytes agree",
        )
        if not gpu:
            import torch

            if not torch.cuda.is_available():
                check(not after.accelerators, "no accelerators on a host without CUDA")
            return 1 if failures else 0
        import torch

        check(after.device.startswith("cuda"), f"device {after.device}")
        check(
            len(after.accelerators) == torch.cuda.device_count(),
            f"{len(after.accelerators)} accelerator(s), as torch counts",
        )
        smi = shutil.which("nvidia-smi")
        uuids = (
            subprocess.run(
                [smi, "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.split()
            if smi
            else []
        )
        for a in after.accelerators:
            label = f"cuda:{a.index}"
            check(a.name == torch.cuda.get_device_name(a.index), f"{label} is {a.name}")
            check(not uuids or a.uuid in uuids, f"{label} uuid {a.uuid} is one nvidia-smi lists {uuids}")
            torch_total = torch.cuda.get_device_properties(a.index).total_memory
            check(
                abs(a.memory_total_bytes - torch_total) < 0.05 * torch_total,
                f"{label} total {a.memory_total_bytes >> 20} MiB (torch: {torch_total >> 20} MiB)",
            )
            check(a.HasField("utilization"), f"{label} utilization known (NVML read): {a.utilization:.2f}")
            check(a.HasField("memory_used_bytes"), f"{label} memory used known: {a.memory_used_bytes >> 20} MiB")
            if label == after.device or (after.device == "cuda" and a.index == torch.cuda.current_device()):
                check(
                    0 < a.allocated_bytes <= a.memory_used_bytes,
                    f"{label} allocator holds {a.allocated_bytes >> 20} MiB (model on it)",
                )
            check(
                series.get("infermesh_accelerator_memory_total_bytes", {}).get(label) == a.memory_total_bytes,
                f"{label} total in /metrics",
            )
            check(
                label in series.get("infermesh_accelerator_memory_used_bytes", {}), f"{label} memory used in /metrics"
            )
            check(
                label in series.get("infermesh_accelerator_utilization_ratio", {}), f"{label} utilization in /metrics"
            )
        check(highest.get(SERIES[0], 0) > 0, f"utilization above 0 while embedding: {highest.get(SERIES[0], 0):.2f}")

        print("\na fresh process reading the accelerators:")
        probe = subprocess.run([sys.executable, "-c", NO_CONTEXT_PROBE], capture_output=True, text=True, env=env)
        print(probe.stdout.strip() or probe.stderr.strip()[-2000:])
        if probe.returncode == 0:
            seen = json.loads(probe.stdout.strip().splitlines()[-1])
            check(
                server.pid in seen["pids_with_a_context"],
                f"the server (pid {server.pid}) has a CUDA context, as NVML lists",
            )
            check(
                seen["pid"] not in seen["pids_with_a_context"], "a reading made no CUDA context in the reader's process"
            )
        else:
            check(False, "the probe ran")
        return 1 if failures else 0
    finally:
        channel.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\n{len(failures)} check(s) failed" if failures else "\nall checks passed")


if __name__ == "__main__":
    sys.exit(main())
