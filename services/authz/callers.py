"""Who is calling, decided from a request's headers by a service that checks its own
calls (the router, whose front-door routes skip Envoy's ext_authz: one Python round trip
less per call). No gRPC here: the router's edge (services/router/authorization.py) reads
the metadata in and answers the refusals.

A call with credentials is authenticated and authorized by the shared policy
(policy.py) and, when RATE_LIMITS gives callers requests per minute, counted against
them (the same counters the gateway's rate limit service keeps for its routes). A call
with no credentials but identity headers comes from inside the mesh, made on a caller's
behalf (the vector service embedding for its caller): the front door removes those
headers from every request it routes to such a service, so no client can send them.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.authz.policy import Authorizer, Principal
from services.limits.config import REQUESTS_PER_MINUTE
from services.limits.limiter import Descriptor, RateLimiter, refusal
from services.runtime.identity import ADMIN, ANONYMOUS, PRINCIPAL_HEADER, USER, Caller

CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def caller_of(principal: Principal) -> Caller:
    """The caller a principal is, as every service reads it (identity.py)."""
    role = ADMIN if ADMIN in principal.roles else USER
    return Caller(principal.subject, role, frozenset(principal.models) or None)


class CallerCheck:
    def __init__(self, authorizer: Authorizer, limiter: RateLimiter | None = None) -> None:
        self._authorizer = authorizer
        self._limiter = limiter if limiter is not None and limiter.config.requests_per_caller else None

    async def caller(self, method: str, headers: Mapping[str, str]) -> Caller:
        """The caller of `method` (a gRPC path); raises policy.Denied (401, 403) or, past
        the caller's requests per minute, RATE_LIMIT_EXCEEDED. `headers` are lowercase."""
        if PRINCIPAL_HEADER in headers and not any(h in headers for h in CREDENTIAL_HEADERS):
            return Caller.from_headers(headers)  # inside the mesh, on a caller's behalf
        principal = await self._authorizer.decide(method, headers)
        if principal is None:
            return ANONYMOUS  # a public method
        caller = caller_of(principal)
        if self._limiter is not None:
            decision = await self._limiter.check(
                [Descriptor({"kind": REQUESTS_PER_MINUTE, "api_key": caller.principal})]
            )
            if not decision.allowed:
                raise refusal(decision.binding, self._limiter.config.window_seconds)
        return caller
