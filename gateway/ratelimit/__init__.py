"""The gateway's rate limits: Envoy's global rate limit service (servicer.py), answered by
the mesh's limiter (services/limits, which the router's quotas share)."""
