"""Entry point: `python -m services.inference` (settings from the environment)."""

from __future__ import annotations

import asyncio
import os
import sys


def main() -> None:
    # Before torch is imported: no hub access at run time, and no OpenMP busy-waiting,
    # which makes torch 20-100x slower when several processes share two cores.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from services.inference.app import InferenceApp
    from services.inference.settings import InferenceSettings
    from services.runtime.server import serve

    async def run(settings: InferenceSettings) -> int:
        return await serve(settings, InferenceApp(settings))

    sys.exit(asyncio.run(run(InferenceSettings())))


if __name__ == "__main__":
    main()
