"""Envoy's helpers: config rendering now; xDS control plane, ext_authz and rate limits later."""
