"""SIGTERM on a service: it reports NOT_SERVING at once, lets in-flight calls finish,
refuses new ones, and exits 0 (DESIGN.md decision 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from support.paths import ROOT
from support.polling import eventually
from support.ports import free_port


def test_sigterm_drains_in_flight_generation_then_exits(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "MODELS": "gemma-3-270m",
        "DATA_DIR": os.environ.get("DATA_DIR", str(ROOT / ".data")),
        "DRAIN_SECONDS": "1",
        "SHUTDOWN_GRACE_SECONDS": "30",
    }
    log = (tmp_path / "inference.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env, stdout=log, stderr=log)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert server.poll() is None, (tmp_path / "inference.log").read_text()
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            return status == health_pb2.HealthCheckResponse.SERVING

        eventually(serving, timeout=300, interval=0.5, what="the inference server SERVING", ignoring=grpc.RpcError)

        stub = pb_grpc.InferenceServiceStub(channel)
        stream = stub.StreamGenerateText(
            pb.GenerateTextRequest(
                model="gemma-3-270m", prompt="Once upon a time", config=options.GenerationConfig(max_tokens=48)
            )
        )
        first = next(stream)
        assert first.text
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING  # Envoy stops routing here
        rest = list(stream)  # the in-flight stream is not cut
        assert rest[-1].usage.output_tokens == 48
        assert server.wait(timeout=60) == 0
        channel.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
