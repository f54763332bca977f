"""Entry point: `python -m services.router` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from services.router.app import RouterApp
from services.router.settings import RouterSettings
from services.runtime.server import serve


async def run(settings: RouterSettings) -> int:
    # The app owns grpc.aio channels, which must be made inside the running loop.
    return await serve(settings, RouterApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(RouterSettings())))


if __name__ == "__main__":
    main()
