"""The gateway: Envoy's helpers, in one process (`python -m gateway`, app.py) — the xDS
control plane that serves Envoy its routes and clusters from the catalog (xds/), the
external authorization service that checks every front-door request (authz/) and the
rate limit service Envoy asks next (ratelimit/) — and the rendering of Envoy's
configuration they and the launcher share (envoy_config/)."""
