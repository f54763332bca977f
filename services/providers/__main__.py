"""Entry point: `python -m infermesh_providers` with PROVIDER=openai or gemini."""

from __future__ import annotations

import asyncio
import sys

from infermesh_providers.app import ProviderApp
from infermesh_providers.settings import ProviderSettings
from infermesh_runtime.server import serve


async def run(settings: ProviderSettings) -> int:
    return await serve(settings, ProviderApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(ProviderSettings())))


if __name__ == "__main__":
    main()
