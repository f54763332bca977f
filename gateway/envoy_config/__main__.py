"""`python -m gateway.envoy_config`: render a static bootstrap from a catalog file."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.envoy_config.bootstrap import EnvoyPorts, render, write
from services.runtime.catalog import EmbeddedCatalog


def main() -> None:
    """Render a static Envoy bootstrap (every route and cluster inline) from a catalog file."""
    parser = argparse.ArgumentParser(prog="python -m gateway.envoy_config", description=main.__doc__)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--descriptor-set", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--listen-host", default="127.0.0.1")
    args = parser.parse_args()
    ports = EnvoyPorts(host=args.listen_host)
    write(render(EmbeddedCatalog.load(args.catalog), args.descriptor_set, ports), args.out)


if __name__ == "__main__":
    main()
