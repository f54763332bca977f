"""What the production mesh runs with, for its conftest and its tests alike: an identity
provider (issuer, audience, the key it signs tokens with) and the rate limits; and what
its fixture hands the tests."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from launcher.mesh import Mesh
from support.trace_collector import TraceCollector

GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"
ISSUER, AUDIENCE = "https://idp.example.test", "infermesh"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# Per key (the keys are issued by test_rate_limits.py under these ids) and per key and
# model: every other caller is unlimited but for its 3 requests a minute to MiniLM.
LIMITS = {
    "keys": {
        "rpm": {"requests_per_minute": 60},
        "tokens": {"tokens_per_minute": 120},
        "streams": {"tokens_per_minute": 100},
        "single": {"concurrent": 1},
        "sdk": {"requests_per_minute": 2},
    },
    "models": {MINILM: {"requests_per_minute": 3}},
}


@dataclass(frozen=True)
class ProductionMesh:
    mesh: Mesh
    admin: str  # the admin key the first start issued
    fronts: list[str]  # both gateways' front doors, host:port
    traces: TraceCollector  # where every process's spans go

    @property
    def admin_key(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin}"}
