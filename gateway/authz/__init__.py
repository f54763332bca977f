"""The gateway's authorization: Envoy's ext_authz service (servicer.py) checks every
front-door request's credentials — API keys with the registry (api_keys.py), OIDC JWTs
against the issuer's keys (oidc.py, jwks.py) — applies the policy by gRPC method
(policy.py) and names the caller to the services behind it in headers."""
