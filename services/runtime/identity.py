"""Who is calling: one type, and the one place that writes it into request headers and
reads it back.

The gateway's authorization service authenticates a caller and writes these headers on
the request it lets through (replacing any a client sent); every service behind it
reads them here, and a service calling another on the caller's behalf forwards them.
With authorization off nobody writes them: the caller is anonymous and may use anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PRINCIPAL_HEADER = "x-infermesh-principal"
ROLE_HEADER = "x-infermesh-role"
MODELS_HEADER = "x-infermesh-models"
HEADERS = (PRINCIPAL_HEADER, ROLE_HEADER, MODELS_HEADER)
USER, ADMIN = "user", "admin"
ANY_MODEL = "*"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller (an API key `apiKeys/{id}`, or a token's subject), its
    role, and the model ids it may use (None: any). The empty principal is anonymous."""

    principal: str = ""
    role: str = ""
    models: frozenset[str] | None = None

    @property
    def anonymous(self) -> bool:
        return not self.principal

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    def headers(self) -> dict[str, str]:
        """The identity headers for this caller."""
        models = ANY_MODEL if self.models is None else ",".join(sorted(self.models))
        return {PRINCIPAL_HEADER: self.principal, ROLE_HEADER: self.role, MODELS_HEADER: models}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Caller:
        """The caller a request's headers (or gRPC metadata) name; anonymous without them."""
        values = dict(headers.items() if isinstance(headers, Mapping) else headers)
        granted = values.get(MODELS_HEADER, ANY_MODEL)
        models = None if granted == ANY_MODEL else frozenset(m for m in granted.split(",") if m)
        return cls(values.get(PRINCIPAL_HEADER, ""), values.get(ROLE_HEADER, ""), models)


ANONYMOUS = Caller()


def forwarded(metadata: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The identity headers of a call, and its trace context, for a call made on the
    caller's behalf (so the next service sees the same caller, in the same trace)."""
    return [(k, v) for k, v in metadata if k in HEADERS or k in ("traceparent", "tracestate")]
