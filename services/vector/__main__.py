"""Entry point: `python -m services.vector` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from services.runtime.server import serve
from services.vector.app import VectorApp
from services.vector.settings import VectorSettings


async def run(settings: VectorSettings) -> int:
    return await serve(settings, VectorApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(VectorSettings())))


if __name__ == "__main__":
    main()
