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
from prometheus_client import Counter, Gauge

from gateway import envoy_config
from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as registry_pb
from infermesh.registry.v1 import registry_service_pb2_grpc as registry_grpc
from launcher.settings import MeshSettings
from launcher.supervision import GiveUp, Supervisor
from services.runtime.catalog import model_health_service, pool_name
from services.runtime.identity import PRINCIPAL_HEADER
from services.runtime.telemetry import otlp_endpoint

log = logging.getLogger(__name__)
UP = Gauge("infermesh_launcher_child_up", "1 while the child runs, 0 while it is down.", ["child"])
RESTARTS = Counter("infermesh_launcher_child_restarts_total", "Children started again after they exited.", ["child"])
GIVEN_UP = Gauge(
    "infermesh_launcher_child_given_up", "1 for a child left down after crashing too often in a row.", ["child"]
)
ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "build" / "infermesh.binpb"


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    argv: list[str]
    env: dict[str, str]


@dataclass
class Mesh:
    settings: MeshSettings
    log_dir: Path | None = None  # None: children write to this terminal
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every child
    children: list[Child] = field(default_factory=list)
    _logs: list[IO] = field(default_factory=list)
    _common: dict[str, str] = field(default_factory=dict)  # every child's environment
    supervisor: Supervisor = field(default_factory=Supervisor)
    _handled: set[int] = field(default_factory=set)  # PIDs whose exit supervise() has seen

    @property
    def run_dir(self) -> Path:
        return self.settings.data_dir.resolve() / "run" / str(self.settings.front_door_port)

    @property
    def catalog_dir(self) -> Path:
        """The embedded catalog every service registers itself in."""
        return self.run_dir / "catalog"

    def start(self) -> None:
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Entries left by a mesh that was killed are stale: start from an empty catalog.
        shutil.rmtree(self.catalog_dir, ignore_errors=True)
        self.catalog_dir.mkdir()
        common = {
            **os.environ,
            **self.env,
            "GRPC_HOST": s.host,
            "CATALOG_DIR": str(self.catalog_dir),
            "HF_HUB_OFFLINE": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONUNBUFFERED": "1",
        }
        self._common = common
        self._service("gateway", "gateway", s.gateway_port, s.gateway_metrics_port)
        data_dir = str(s.data_dir.resolve())
        for index in range(s.inference_replicas):
            grpc_port, metrics_port = s.inference_ports(index)
            models = ",".join(s.models)
            self._service(
                f"inference-{index}", "services.inference", grpc_port, metrics_port, MODELS=models, DATA_DIR=data_dir
            )
        self._service(
            "registry",
            "services.registry",
            s.registry_port,
            s.registry_metrics_port,
            DATA_DIR=data_dir,
            REGISTRY_DATABASE_URL=s.registry_database_url,
        )
        vector_dir = {"VECTOR_DIR": str(s.vector_dir.resolve())} if s.vector_dir else {}
        self._service(
            "vector", "services.vector", s.vector_port, s.vector_metrics_port, DATA_DIR=data_dir, **vector_dir
        )
        self._service(
            "jobs",
            "services.jobs",
            s.jobs_port,
            s.jobs_metrics_port,
            DATA_DIR=data_dir,
            REGISTRY_DATABASE_URL=s.registry_database_url,
        )
        mesh_address = f"{s.host}:{s.mesh_port}"
        # With authorization on, the router checks the calls Envoy routes to it itself
        # (Envoy's ext_authz covers the other routes): one round trip less per call.
        self._service(
            "router",
            "services.router",
            s.router_port,
            s.router_metrics_port,
            MESH_ADDRESS=mesh_address,
            AUTHORIZE_CALLS=str(s.auth).lower(),
        )
        for name in s.providers:
            metrics_port = getattr(s, f"{name}_metrics_port")
            self._service(name, "services.providers", self._provider_port(name), metrics_port, PROVIDER=name)
        ports = envoy_config.EnvoyPorts(s.front_door_port, s.mesh_port, s.admin_port, s.host)
        self._spawn_envoy("envoy", ports, s.gateway_port)

    def _spawn_envoy(self, name: str, ports: envoy_config.EnvoyPorts, gateway_port: int) -> None:
        s = self.settings
        envoy_file = self.run_dir / f"{name}.yaml"
        collector = otlp_endpoint(self._common)
        bootstrap = envoy_config.render_ads(
            DESCRIPTOR_SET, ports, (s.host, gateway_port), authorization=s.auth, collector=collector
        )
        envoy_config.write(bootstrap, envoy_file)
        envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
        argv = [envoy, "-c", str(envoy_file), "--disable-hot-restart", "--log-level", "warn"]
        self._spawn(name, argv, self._common)

    def add_gateway(self, ports: envoy_config.EnvoyPorts, gateway_port: int) -> str:
        """Start one more gateway and its Envoy, on these ports (the same catalog, limits
        and credentials as the first); its front door's address."""
        index = len([c for c in self.children if c.name.startswith("gateway")])
        name = f"gateway-{index}"
        self._service(name, "gateway", gateway_port, None)
        self._spawn_envoy(f"envoy-{index}", ports, gateway_port)
        return f"{ports.host}:{ports.front_door}"

    def _service(self, name: str, package: str, port: int, metrics_port: int | None, **env: str) -> None:
        """Start `python -m package` as instance `name` on `port` (and `metrics_port`)."""
        settings = {"INSTANCE_NAME": name, "GRPC_PORT": str(port), **_metrics_env(metrics_port), **env}
        self._spawn(name, [sys.executable, "-m", package], {**self._common, **settings})

    def _provider_port(self, name: str) -> int:
        return getattr(self.settings, f"{name}_port")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out: IO | None = None
        if self.log_dir is not None:
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )
        self.children.append(Child(name, process, argv, env))
        UP.labels(name).set(1)
        log.info("started %s (pid %d)", name, process.pid)

    def child(self, name: str) -> Child:
        return next(c for c in reversed(self.children) if c.name == name)

    def restart(self, name: str) -> Child:
        """Start a child again the way it was started (after it died or was killed)."""
        old = self.child(name)
        if old.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.process.pid})")
        self.children.remove(old)
        self._spawn(name, old.argv, old.env)
        return self.child(name)

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def supervise(self, now: float | None = None) -> None:
        """Once the mesh is up (`make run` calls this twice a second): a child that exited
        is started again as it was, after the restart policy's pause; one that keeps
        crashing is left down and reported, and the others go on serving. A restarted
        service registers itself again (its catalog entry replaced, not duplicated) and
        rejoins Envoy's pools once its health checks pass; Envoy comes back with the
        configuration the control plane serves it."""
        now = time.monotonic() if now is None else now
        for child in self.exited():
            if child.process.pid in self._handled:
                continue
            self._handled.add(child.process.pid)
            UP.labels(child.name).set(0)
            code = child.process.returncode
            decision = self.supervisor.exited(child.name, now)
            if isinstance(decision, GiveUp):
                GIVEN_UP.labels(child.name).set(1)
                log.error(
                    "%s exited with code %s, its %d crash within %.0fs: leaving it down (the rest of the mesh "
                    "keeps serving; restart `make run` once the cause is fixed)",
                    child.name, code, decision.crashes, self.supervisor.policy.window_seconds,
                )  # fmt: skip
            else:
                log.warning(
                    "%s exited with code %s; restarting it in %.1fs (crash %d within %.0fs; left down at %d)",
                    child.name, code, decision.at - now, decision.crashes, self.supervisor.policy.window_seconds,
                    self.supervisor.policy.crash_limit,
                )  # fmt: skip
        for name in self.supervisor.due(now):
            self.restart(name)
            RESTARTS.labels(name).inc()

    def model_states(self) -> dict[str, bool]:
        """Per-model readiness, asked of health services: loaded on every inference
        replica, and routable by the router (which follows the catalog on its own)."""
        states = dict.fromkeys(self.settings.models, True)
        targets = [
            *(
                (self.settings.inference_ports(index)[0], envoy_config.HEALTH_SERVICES["inference"])
                for index in range(self.settings.inference_replicas)
            ),
            (self.settings.router_port, envoy_config.HEALTH_SERVICES["router"]),
        ]
        for port, service in targets:
            with grpc.insecure_channel(f"{self.settings.host}:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for model in self.settings.models:
                    request = health_pb2.HealthCheckRequest(service=model_health_service(service, model))
                    try:
                        serving = stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING
                    except grpc.RpcError:
                        serving = False
                    states[model] = states[model] and serving
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
        # The clusters come from the gateway: wait until they are all there.
        needed = {
            "router",
            "registry",
            "vector",
            "jobs",
            *(f"inference-{i}" for i in range(self.settings.inference_replicas)),
        }
        needed |= {pool_name("inference", model) for model in self.settings.models}  # models ready in the catalog
        present = {line.split("::", 1)[0] for line in flags}
        return needed <= present and all(line.endswith("::healthy") for line in flags)

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

    def ensure_admin_key(self) -> str | None:
        """With authorization on and no API key issued yet (a first start), issue an admin
        key and return its secret — the only time it exists outside the caller; None
        when keys exist already. Asks the registry directly, not through the front door."""
        if not self.settings.auth:
            return None
        return issue_admin_key(self.settings, "admin", "first admin, issued by make run", only_if_none=True)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM services, then Envoy; SIGKILL whatever is still there after `timeout`."""
        envoys = [c for c in self.children if c.name.startswith("envoy")]
        for group in ([c for c in self.children if c not in envoys], envoys):
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


def _metrics_env(port: int | None) -> dict[str, str]:
    return {} if port is None else {"METRICS_PORT": str(port)}


def issue_admin_key(settings: MeshSettings, key_id: str, display_name: str, only_if_none: bool = False) -> str | None:
    """Issue an admin API key from the registry itself (this machine's, on its own port:
    whoever can reach it runs the mesh) and return its secret; with `only_if_none`, only
    when there is no key at all (None otherwise)."""
    with grpc.insecure_channel(f"{settings.host}:{settings.registry_port}") as channel:
        registry = registry_grpc.RegistryServiceStub(channel)
        if only_if_none and registry.ListApiKeys(registry_pb.ListApiKeysRequest(page_size=1), timeout=10).api_keys:
            return None
        key = res.ApiKey(display_name=display_name, roles=[res.ApiKey.ROLE_ADMIN])
        request = registry_pb.CreateApiKeyRequest(api_key_id=key_id, api_key=key)
        # Recorded in the audit log as done on this machine, not through the front door.
        local = [(PRINCIPAL_HEADER, f"local:{key_id}")]
        return registry.CreateApiKey(request, metadata=local, timeout=10).secret
