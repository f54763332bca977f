"""The router: the mesh's public API. Resolves a model to a backend and calls it through Envoy."""
