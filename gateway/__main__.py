"""`python -m infermesh_gateway`: the xDS control plane (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from infermesh_gateway.app import ControlPlaneApp
from infermesh_gateway.settings import ControlPlaneSettings
from infermesh_runtime.server import serve


async def run(settings: ControlPlaneSettings) -> int:
    # The catalog's clients belong to the running loop.
    return await serve(settings, ControlPlaneApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(ControlPlaneSettings())))


if __name__ == "__main__":
    main()
