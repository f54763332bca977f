"""The gateway's authorization: Envoy's ext_authz service (servicer.py) checks the
credentials of front-door requests to every service but the router (which checks its own
calls), with the shared policy and credential checks (services/authz/), and names the
caller to the service behind it in headers."""
