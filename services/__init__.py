"""The mesh's gRPC services, one package each (router, inference, providers, registry,
vector), and what they share: the runtime kit (runtime), the backend contract (backend)
and the limiter (limits). Envoy's helpers are in gateway/, the `make run` launcher in
launcher/."""
