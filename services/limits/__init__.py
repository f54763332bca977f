"""The mesh's rate limits and quotas: configuration (config.py) and the limiter that
counts them (limiter.py), shared by Envoy's rate limit service and the router."""
