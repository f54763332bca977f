"""Entry point: `python -m services.jobs` (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from services.jobs.app import JobsApp
from services.jobs.settings import JobsSettings
from services.runtime.server import serve


async def run(settings: JobsSettings) -> int:
    return await serve(settings, JobsApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(JobsSettings())))


if __name__ == "__main__":
    main()
