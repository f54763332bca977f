"""Start and stop the processes of a one-machine mesh, in order, by PID.

Children run in their own sessions so a Ctrl-C reaches only the launcher, which then
stops them in order: services first (they report NOT_SERVING and drain), Envoy last.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh_gateway import envoy_config
from infermesh_mesh.settings import MeshSettings
from infermesh_runtime.catalog import EmbeddedCatalog, ServiceInstance

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent
DESCRIPTOR_SET = ROOT / "build" / "infermesh.binpb"
INFERENCE_SERVICE = "infermesh.inference.v1.InferenceService"


@dataclass
class Child:
    name: str
    process: subprocess.Popen


@dataclass
class Mesh:
    settings: MeshSettings
    log_dir: Path | None = None  # None: children write to this terminal
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every child
    children: list[Child] = field(default_factory=list)
    _logs: list[IO] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.settings.data_dir.resolve() / "run" / str(self.settings.front_door_port)

    def catalog(self) -> EmbeddedCatalog:
        s = self.settings
        return EmbeddedCatalog.of(
            [
                ServiceInstance("router", "router", s.host, s.router_port),
                ServiceInstance("inference-0", "inference", s.host, s.inference_port, tuple(s.models)),
                ServiceInstance("registry", "registry", s.host, s.registry_port),
                *(
                    ServiceInstance(name, "provider", s.host, self._provider_port(name), self._provider_models(name))
                    for name in s.providers
                ),
            ]
        )

    def _provider_port(self, name: str) -> int:
        return getattr(self.settings, f"{name}_port")

    def _provider_models(self, name: str) -> tuple[str, ...]:
        from infermesh_providers.settings import ProviderSettings

        settings = ProviderSettings(provider=name, _env_file=None, **_provider_overrides(self.env))
        return tuple(dict.fromkeys(settings.default_models().values()))

    def start(self) -> None:
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        catalog = self.catalog()
        catalog_file = self.run_dir / "catalog.yaml"
        catalog.save(catalog_file)
        envoy_file = self.run_dir / "envoy.yaml"
        ports = envoy_config.EnvoyPorts(s.front_door_port, s.mesh_port, s.admin_port, s.host)
        envoy_config.write(envoy_config.render(catalog, DESCRIPTOR_SET, ports), envoy_file)

        common = {
            **os.environ,
            **self.env,
            "GRPC_HOST": s.host,
            "HF_HUB_OFFLINE": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONUNBUFFERED": "1",
        }
        self._spawn(
            "inference-0",
            [sys.executable, "-m", "infermesh_inference"],
            {
                **common,
                "GRPC_PORT": str(s.inference_port),
                "MODELS": ",".join(s.models),
                "DATA_DIR": str(s.data_dir.resolve()),
                **_metrics_env(s.inference_metrics_port),
            },
        )
        self._spawn(
            "registry",
            [sys.executable, "-m", "infermesh_registry"],
            {
                **common,
                "GRPC_PORT": str(s.registry_port),
                "DATA_DIR": str(s.data_dir.resolve()),
                "REGISTRY_DATABASE_URL": s.registry_database_url,
                **_metrics_env(s.registry_metrics_port),
            },
        )
        self._spawn(
            "router",
            [sys.executable, "-m", "infermesh_router"],
            {
                **common,
                "GRPC_PORT": str(s.router_port),
                "CATALOG_FILE": str(catalog_file),
                "MESH_ADDRESS": f"{s.host}:{s.mesh_port}",
                **_metrics_env(s.router_metrics_port),
            },
        )
        for name in s.providers:
            self._spawn(
                name,
                [sys.executable, "-m", "infermesh_providers"],
                {**common, "PROVIDER": name, "GRPC_PORT": str(self._provider_port(name))},
            )
        envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
        self._spawn(
            "envoy",
            [envoy, "-c", str(envoy_file), "--disable-hot-restart", "--log-level", "warn"],
            common,
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out: IO | None = None
        if self.log_dir is not None:
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )
        self.children.append(Child(name, process))
        log.info("started %s (pid %d)", name, process.pid)

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def model_states(self) -> dict[str, bool]:
        """Per-model readiness, asked of the inference server's health service."""
        target = f"{self.settings.host}:{self.settings.inference_port}"
        states = {}
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for model in self.settings.models:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=f"{INFERENCE_SERVICE}/{model}"), timeout=1)
                    states[model] = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    states[model] = False
        return states

    def envoy_sees_all_healthy(self) -> bool:
        url = f"http://{self.settings.host}:{self.settings.admin_port}/clusters"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                text = reply.read().decode()
        except OSError:
            return False
        # Provider adapters are optional: without an API key they stay NOT_SERVING, and
        # the router routes around them.
        optional = tuple(f"{name}::" for name in self.settings.providers)
        flags = [line for line in text.splitlines() if "::health_flags::" in line and not line.startswith(optional)]
        return bool(flags) and all(line.endswith("::healthy") for line in flags)

    def wait_ready(self, progress: bool = False, interrupted: Callable[[], bool] = lambda: False) -> float:
        """Block until Envoy routes to every healthy service; the seconds it took."""
        started = time.monotonic()
        last_report = ""
        while True:
            if interrupted():
                raise RuntimeError("interrupted")
            if dead := self.exited():
                raise RuntimeError(f"{dead[0].name} exited with code {dead[0].process.returncode} during start-up")
            states = self.model_states()
            ready = all(states.values()) and self.envoy_sees_all_healthy()
            elapsed = time.monotonic() - started
            if ready:
                return elapsed
            if elapsed > self.settings.ready_timeout_seconds:
                raise TimeoutError(f"mesh not ready after {elapsed:.0f}s: {states}")
            report = ", ".join(f"{m} {'ready' if ok else 'loading'}" for m, ok in states.items())
            if progress and report != last_report:
                print(f"[{elapsed:5.1f}s] models: {report}", flush=True)
                last_report = report
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM services, then Envoy; SIGKILL whatever is still there after `timeout`."""
        for group in ([c for c in self.children if c.name != "envoy"], [c for c in self.children if c.name == "envoy"]):
            for child in group:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                    child.process.kill()
                    child.process.wait()
        for out in self._logs:
            out.close()
        self.children.clear()


def _provider_overrides(env: dict[str, str]) -> dict[str, str]:
    """Provider model settings given to the launcher (its own environment counts too)."""
    names = ("OPENAI_TEXT_MODEL", "OPENAI_VISION_MODEL", "OPENAI_EMBEDDING_MODEL", "GEMINI_TEXT_MODEL")
    names += ("GEMINI_VISION_MODEL", "GEMINI_EMBEDDING_MODEL")
    merged = {**os.environ, **env}
    return {name.lower(): merged[name] for name in names if name in merged}


def _metrics_env(port: int | None) -> dict[str, str]:
    return {} if port is None else {"METRICS_PORT": str(port)}
