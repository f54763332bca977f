"""Entry point: `python -m services.registry` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from services.registry.app import RegistryApp
from services.registry.settings import RegistrySettings
from services.runtime.server import serve


async def run(settings: RegistrySettings) -> int:
    return await serve(settings, RegistryApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(RegistrySettings())))


if __name__ == "__main__":
    main()
