"""The contracts: buf lint passes on the built image, and every RPC carries google.api.http."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from support.paths import BIN, ROOT

IMAGE = ROOT / "build" / "infermesh.binpb"
VALIDATE = "buf/validate/validate.proto"


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


def http_rules():
    """(package, service, method, google.api.http rule) for every RPC of the mesh's own protos."""
    files = descriptor_pb2.FileDescriptorSet.FromString(IMAGE.read_bytes())
    for file in files.file:
        if not file.package.startswith("infermesh."):
            continue
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())
                yield file.package, service.name, method.name, options.Extensions[annotations_pb2.http]


def test_every_rpc_has_an_http_rule_and_the_seed_paths_exist():
    posts = set()
    for _, service, method, rule in http_rules():
        if f"{service}.{method}" in INTERNAL:
            assert not rule.WhichOneof("pattern"), f"{method} is internal: no REST binding"
            continue
        assert rule.WhichOneof("pattern"), f"{service}.{method} has no google.api.http"
        posts.add(rule.post)
    assert {"/v1/generate-text", "/v1/describe-image", "/v1/embed", "/v1/chat/completions"} <= posts


def test_the_repos_protos_compile_as_they_are_with_plain_protoc(tmp_path):
    """What a gRPC user in any language does: protoc with the repo's folders only
    (third_party/ holds every import, buf/validate/validate.proto included)."""
    from grpc_tools import protoc

    ours = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    include = [f"-I{ROOT / d}" for d in ("protos", "third_party/googleapis", "third_party/protovalidate")]
    well_known = f"-I{Path(protoc.__file__).parent / '_proto'}"  # google/protobuf/*, which protoc ships
    out = tmp_path / "all.binpb"
    assert protoc.main(["protoc", *include, well_known, f"--descriptor_set_out={out}", *ours]) == 0


def test_the_vendored_validate_proto_is_the_one_the_build_validates_with():
    """Field for field, the vendored buf/validate/validate.proto (protovalidate v1.2.2) is
    the descriptor protovalidate-py embeds and the build compiles against."""
    import tempfile

    from grpc_tools import protoc

    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_protos import validate_descriptor

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "validate.binpb"
        include = f"-I{Path(protoc.__file__).parent / '_proto'}"
        vendored = f"-I{ROOT / 'third_party' / 'protovalidate'}"
        assert protoc.main(["protoc", vendored, include, f"--descriptor_set_out={out}", VALIDATE]) == 0
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[-1]
    embedded = validate_descriptor()
    # Language packaging options differ (buf's managed mode set them for the wheel); the
    # messages, fields, enums and extensions are what clients compile against.
    compiled.ClearField("options")
    embedded.ClearField("options")
    assert compiled == embedded


# The router's messages and the backend contract's they forward (router_messages.proto),
# with the fields only the router has.
ROUTER_MESSAGES = {
    "GenerateTextRequest": {"routing"},
    "GenerateTextResponse": {"error"},
    "ChatRequest": {"routing"},
    "ChatResponse": {"error"},
    "EmbedRequest": {"routing"},
    "EmbedResponse": set(),
    "DescribeImageRequest": {"routing"},
    "DescribeImageResponse": set(),
    "TranscribeRequest": {"routing"},
    "TranscribeResponse": {"error"},
    "SynthesizeRequest": {"routing"},
    "SynthesizeResponse": {"error"},
    "ExtractTextRequest": {"routing"},
    "ExtractTextResponse": set(),
    "ClassifyImageRequest": {"routing"},
    "ClassifyImageResponse": set(),
}


def _messages(package: str) -> dict[str, descriptor_pb2.DescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(IMAGE.read_bytes())
    return {m.name: m for f in files.file if f.package == package for m in f.message_type}


def test_the_routers_messages_are_the_backends_field_for_field_plus_its_own():
    """The router forwards a request (routing cleared) as the backend's message and parses
    a backend's answer as its own without re-encoding: that holds only while every backend
    field is the router's under the same number, type and rules, and the router's own
    fields use numbers the backend never will."""
    router, backend = _messages("infermesh.router.v1"), _messages("infermesh.inference.v1")
    for name, own in ROUTER_MESSAGES.items():
        theirs = {f.name: f for f in backend[name].field}
        ours = {f.name: f for f in router[name].field}
        for field_name, field in theirs.items():
            assert field_name in ours, f"router {name} lacks the backend's {field_name}"
            mine = ours[field_name]
            assert (mine.number, mine.type, mine.label, mine.type_name, mine.proto3_optional) == (
                field.number,
                field.type,
                field.label,
                field.type_name,
                field.proto3_optional,
            ), f"{name}.{field_name} differs between the router and the backend"
            assert mine.options.SerializeToString() == field.options.SerializeToString(), (
                f"{name}.{field_name}'s validation rules differ between the router and the backend"
            )
        assert set(ours) - set(theirs) == own, f"router {name} has fields the backend lacks: {set(ours) - set(theirs)}"
        taken = {f.number for f in backend[name].field}
        for field_name in own:
            assert ours[field_name].number not in taken, f"router {name}.{field_name} reuses a backend field number"


def test_backend_messages_carry_no_router_fields():
    backend = _messages("infermesh.inference.v1")
    for name in ROUTER_MESSAGES:
        names = {f.name for f in backend[name].field}
        assert not names & {"routing", "use_fallbacks", "error"}, f"{name} carries a router-only field"


def test_no_rest_path_is_bound_twice():
    bound: dict[tuple[str, str], str] = {}
    for package, service, method, rule in http_rules():
        verb = rule.WhichOneof("pattern")
        if verb is None:
            continue
        key = (verb, getattr(rule, verb))
        where = f"{package}.{service}.{method}"
        assert key not in bound, f"{key} is bound by both {bound[key]} and {where}"
        bound[key] = where
    # The inference server's model lifecycle is under /v1/backend/ with its other
    # operator paths; /v1/models is the OpenAI surface's alone.
    lifecycle = {k[1] for k, v in bound.items() if ".ModelService." in v}
    assert all(path.startswith("/v1/backend/") for path in lifecycle), lifecycle
