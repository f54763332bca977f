"""Entry point: `python -m services.providers` with PROVIDER=openai or gemini."""

from __future__ import annotations

import asyncio
import sys

from services.providers.app import ProviderApp
from services.providers.settings import ProviderSettings
from services.runtime.server import serve


async def run(settings: ProviderSettings) -> int:
    return await serve(settings, ProviderApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(ProviderSettings())))


if __name__ == "__main__":
    main()
