"""Provider failures as the mesh's canonical errors (AIP-193), with keys scrubbed.

Both SDKs raise on HTTP statuses; the status decides the code: 400/422 bad input,
401 unauthenticated, 403 permission denied, 404 not found, 408/504 and timeouts deadline
exceeded, 429 resource exhausted (with the provider's retry advice: a Retry-After header
or, from Google, a RetryInfo detail), 5xx and connection failures unavailable.
"""

from __future__ import annotations

import email.utils
import re
import time

import grpc

from services.runtime.errors import (
    Aborted,
    DeadlineExceeded,
    DomainError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

BY_STATUS: dict[int, type[DomainError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    408: DeadlineExceeded,
    409: Aborted,
    413: InvalidArgument,
    422: InvalidArgument,
    429: ResourceExhausted,
    504: DeadlineExceeded,
}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
# Things that look like credentials, in case a provider echoes one back (OpenAI's 401
# message quotes the key it was given, partly masked).
CREDENTIAL = re.compile(r"\b(sk-[A-Za-z0-9_*.\-]{6,}|AIza[0-9A-Za-z_\-]{10,})")


class Redactor:
    def __init__(self, *secrets: str) -> None:
        self._secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return CREDENTIAL.sub("[redacted]", text)


def from_status(provider: str, status: int, message: str, retry_after: float | None, redact: Redactor) -> DomainError:
    kind = BY_STATUS.get(status) or (Unavailable if status >= 500 else Internal)
    return kind(
        f"{provider} answered HTTP {status}: {redact(message)}",
        reason=f"PROVIDER_HTTP_{status}",
        retry_after=retry_after if kind is ResourceExhausted or retry_after else None,
        provider=provider,
        status=status,
    )


def timed_out(provider: str, detail: str, redact: Redactor) -> DomainError:
    return DeadlineExceeded(
        f"{provider} did not answer in time: {redact(detail)}", reason="PROVIDER_TIMEOUT", provider=provider
    )


def unreachable(provider: str, detail: str, redact: Redactor) -> DomainError:
    return Unavailable(
        f"{provider} could not be reached: {redact(detail)}", reason="PROVIDER_UNREACHABLE", provider=provider
    )


def check_count(provider: str, what: str, got: int, expected: int) -> None:
    """A reply with more or fewer items than were asked for is the provider's failure
    (as a 5xx would be), not one to pass on in pieces."""
    if got != expected:
        raise Unavailable(
            f"{provider} answered {got} {what} for {expected} inputs",
            reason="PROVIDER_BAD_REPLY",
            provider=provider,
            got=got,
            expected=expected,
        )


def retry_after_header(headers) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def retry_delay_detail(body: object) -> float | None:
    """Google's RetryInfo (`"retryDelay": "2s"`) in an error body's details."""
    error = body.get("error", body) if isinstance(body, dict) else None
    for detail in (error or {}).get("details", []) if isinstance(error, dict) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None
