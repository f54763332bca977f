"""Which catalog to use: the only place that knows. Consul when CONSUL_HTTP_ADDR is set,
else the embedded catalog (a directory of self-registered instances, plus fixed ones)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from services.runtime.catalog import Catalog, EmbeddedCatalog, ServiceInstance


def open_catalog(
    consul_address: str,
    directory: Path | None,
    fixed: Iterable[ServiceInstance] = (),
    *,
    consul_token: str | None = None,
) -> Catalog:
    """`consul_address` is CONSUL_HTTP_ADDR (empty: the embedded catalog in `directory`);
    `consul_token` the ACL token, CONSUL_HTTP_TOKEN when None. `fixed` entries are part of
    the view either way (services that do not register themselves). Nothing is contacted
    until `start()` or `register()`."""
    if consul_address:
        from services.runtime.consul_catalog import ConsulCatalog  # py-consul only where used

        return ConsulCatalog(consul_address, token=consul_token, fixed=fixed)
    return EmbeddedCatalog(directory, fixed)
