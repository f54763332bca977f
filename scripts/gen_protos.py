"""Generate Python code and Envoy's descriptor set from protos/.

buf/validate/validate.proto is not shipped as source by any package this project can
install, so its descriptor is taken from the protovalidate wheel (which embeds it)
and given to protoc with --descriptor_set_in. Everything written here is build
output: gen/python for Python, build/ for descriptor sets.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import protovalidate
from google.protobuf import (
    descriptor_pb2,
    duration_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
)
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
VENDORED = ROOT / "third_party" / "googleapis"
GEN = ROOT / "gen" / "python"
BUILD = ROOT / "build"
VALIDATE = "buf/validate/validate.proto"
# Error details must be in Envoy's descriptor set, or convert_grpc_status drops the body.
ENVOY_EXTRA = ["google/rpc/status.proto", "google/rpc/error_details.proto"]


def validate_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Read buf/validate/validate.proto's serialized descriptor out of protovalidate."""
    source = Path(protovalidate.__file__).parent / "_gen" / "buf" / "validate" / "validate_pb.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "file_desc":
            return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
    raise RuntimeError(f"no file descriptor found in {source}")


def write_dependency_set(path: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet()
    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    files.file.append(validate_descriptor())
    path.write_bytes(files.SerializeToString())


def run_protoc(*args: str) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTOS}", f"-I{VENDORED}", f"-I{include}", *args])
    if code != 0:
        sys.exit(f"protoc failed with exit code {code}")


def main() -> None:
    BUILD.mkdir(exist_ok=True)
    GEN.mkdir(parents=True, exist_ok=True)
    deps = BUILD / "protodeps.binpb"
    write_dependency_set(deps)
    ours = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    run_protoc(
        f"--descriptor_set_in={deps}",
        f"--python_out={GEN}",
        f"--pyi_out={GEN}",
        f"--grpc_python_out={GEN}",
        VALIDATE,
        *ours,
    )
    # Regular packages, so setuptools maps them like any other package.
    for directory in [GEN / "infermesh", GEN / "buf", *GEN.joinpath("infermesh").rglob("*"), GEN / "buf" / "validate"]:
        if directory.is_dir():
            directory.joinpath("__init__.py").touch()
    # One self-contained descriptor set: Envoy's transcoder and `buf lint`/`buf breaking`.
    run_protoc(
        f"--descriptor_set_in={deps}",
        f"--descriptor_set_out={BUILD / 'infermesh.binpb'}",
        "--include_imports",
        "--include_source_info",
        *ours,
        *ENVOY_EXTRA,
    )
    print(f"generated {len(ours)} protos into {GEN.relative_to(ROOT)} and build/infermesh.binpb")


if __name__ == "__main__":
    main()
