"""Shared fixtures: free ports, and one real mesh (Envoy + router + inference server with
real models) started by the same launcher `make run` uses."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermesh_mesh.launcher import Mesh
from infermesh_mesh.settings import MeshSettings

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mesh_settings(**overrides: object) -> MeshSettings:
    ports = {
        "front_door_port": free_port(),
        "admin_port": free_port(),
        "mesh_port": free_port(),
        "router_port": free_port(),
        "inference_port": free_port(),
        "router_metrics_port": free_port(),
        "inference_metrics_port": free_port(),
    }
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
    return MeshSettings(**{**ports, "data_dir": data_dir, "ready_timeout_seconds": 600, **overrides})


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("mesh-logs")
    running = Mesh(mesh_settings(), log_dir=logs)
    running.start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def front_door(mesh: Mesh) -> str:
    return f"127.0.0.1:{mesh.settings.front_door_port}"


@pytest.fixture(scope="session")
def base_url(front_door: str) -> str:
    return f"http://{front_door}"
