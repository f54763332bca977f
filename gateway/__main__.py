"""`python -m gateway`: the gateway, Envoy's xDS control plane, authorization and rate limit
services in one process (settings from the environment)."""

from __future__ import annotations

import asyncio
import sys

from gateway.app import GatewayApp
from gateway.settings import GatewaySettings
from services.runtime.server import serve


async def run(settings: GatewaySettings) -> int:
    # The catalog's clients belong to the running loop.
    return await serve(settings, GatewayApp(settings))


def main() -> None:
    sys.exit(asyncio.run(run(GatewaySettings())))


if __name__ == "__main__":
    main()
