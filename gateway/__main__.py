"""`python -m gateway`: the xDS control plane (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from gateway.app import ControlPlaneApp
from gateway.settings import ControlPlaneSettings
from services.runtime.server import serve


async def run(settings: ControlPlaneSettings) -> int:
    # The catalog's clients belong to the running loop.
    return await serve(settings, ControlPlaneApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(ControlPlaneSettings())))


if __name__ == "__main__":
    main()
