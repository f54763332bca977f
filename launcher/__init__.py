"""The `make run` launcher: starts the whole mesh on one machine (Envoy, the gateway, the
registry, the router, inference servers, adapters, vector, jobs), restarts what dies and stops
it; not a service."""
