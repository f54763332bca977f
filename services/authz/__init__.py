"""Who may call what, shared by the two places that check it: the gateway's ext_authz
service (gateway/authz/), for the front door's routes to the registry, the vector
service and the inference servers, and the router (services/router/authorization.py),
for its own routes. Credentials are API keys, checked with the registry (api_keys.py), or
OIDC JWTs, checked against the issuer's keys (oidc.py, jwks.py); the policy is by gRPC
method (policy.py)."""
