"""`make run`'s launcher: it reports readiness, and Ctrl-C stops every process it started
and frees every port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import yaml

from support.meshes import mesh_settings
from support.paths import ROOT
from support.polling import eventually


def port_is_free(port: int) -> bool:
    """Free for a new server: nothing listens (SO_REUSEADDR, as servers bind, so closed
    connections still in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_stops_everything_cleanly(tmp_path):
    settings = mesh_settings()
    ports = {name: value for name, value in settings.model_dump().items() if name.endswith("_port") and value}
    env = {**os.environ, **{f"MESH_{name.upper()}": str(value) for name, value in ports.items()}}
    env["MESH_DATA_DIR"] = str(settings.data_dir)
    env["MESH_REGISTRY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'registry.db'}"
    out = (tmp_path / "mesh.out").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    children: list[int] = []
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "mesh.out").read_text()
            return "infermesh is ready" in (tmp_path / "mesh.out").read_text()

        eventually(ready, timeout=600, interval=0.5, what="the launcher saying it is ready")
        text = (tmp_path / "mesh.out").read_text()
        assert "models: gemma-3-270m" in text  # readiness progress was printed
        assert f"curl -s 127.0.0.1:{settings.front_door_port}/v1/generate-text" in text
        children = [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", text)]
        # The gateway, the inference server, the registry, the vector and jobs services,
        # the router, a provider adapter each, Envoy.
        assert len(children) == 7 + len(settings.providers)
        # Every service registered itself in the embedded catalog, the inference server
        # with the models it has ready and what they can do.
        catalog = settings.data_dir.resolve() / "run" / str(settings.front_door_port) / "catalog"
        entries = {p.stem: yaml.safe_load(p.read_text()) for p in catalog.glob("*.yaml")}
        assert set(entries) == {"gateway", "inference-0", "registry", "vector", "jobs", "router", *settings.providers}
        assert set(entries["inference-0"]["models"]) == set(settings.models)
        assert {"chat", "embedding", "text-generation"} <= set(entries["inference-0"]["capabilities"])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not list(catalog.glob("*.yaml"))  # and left it on the way out
    finally:
        # Even when an assertion failed: the launcher's children run in their own
        # sessions, so killing the launcher alone would leave them running.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        text = (tmp_path / "mesh.out").read_text()
        children = children or [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", text)]
        leftovers = [pid for pid in children if pid_alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert not leftovers
    assert [name for name, port in ports.items() if not port_is_free(port)] == []
    assert "stopped" in (tmp_path / "mesh.out").read_text()
