"""Entry point: `python -m infermesh_vector` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from infermesh_runtime.server import serve
from infermesh_vector.app import VectorApp
from infermesh_vector.settings import VectorSettings


async def run(settings: VectorSettings) -> int:
    return await serve(settings, VectorApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(VectorSettings())))


if __name__ == "__main__":
    main()
