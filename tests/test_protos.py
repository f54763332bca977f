"""The contracts: buf lint passes on the built image, and every RPC carries google.api.http."""

from __future__ import annotations

import subprocess

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from conftest import BIN, ROOT

IMAGE = ROOT / "build" / "infermesh.binpb"


def test_buf_lint_reports_nothing():
    result = subprocess.run(
        [str(BIN / "buf"), "lint", str(IMAGE), "--path", "infermesh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Methods for the mesh's own services, deliberately without a REST binding (the gateway
# refuses them at the front door too).
INTERNAL = {"RegistryService.AuthenticateApiKey", "RegistryService.RecordAuditEvent"}


def test_every_rpc_has_an_http_rule_and_the_seed_paths_exist():
    files = descriptor_pb2.FileDescriptorSet.FromString(IMAGE.read_bytes())
    posts = set()
    for file in files.file:
        if not file.package.startswith("infermesh."):
            continue
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())
                rule = options.Extensions[annotations_pb2.http]
                if f"{service.name}.{method.name}" in INTERNAL:
                    assert not rule.WhichOneof("pattern"), f"{method.name} is internal: no REST binding"
                    continue
                assert rule.WhichOneof("pattern"), f"{service.name}.{method.name} has no google.api.http"
                posts.add(rule.post)
    assert {"/v1/generate-text", "/v1/describe-image", "/v1/embed", "/v1/chat/completions"} <= posts
