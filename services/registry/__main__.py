"""Entry point: `python -m infermesh_registry` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from infermesh_registry.app import RegistryApp
from infermesh_registry.settings import RegistrySettings
from infermesh_runtime.server import serve


async def run(settings: RegistrySettings) -> int:
    return await serve(settings, RegistryApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(RegistrySettings())))


if __name__ == "__main__":
    main()
