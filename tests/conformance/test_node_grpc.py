"""grpc-js and @grpc/proto-loader (tests/conformance/node) against the mesh's front door:
the repo's protos compile as they are, with nothing but third_party/ beside them
(buf/validate/validate.proto is vendored there), and the typed API answers over gRPC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent / "node"


def run_case(front_door: str, case: str) -> dict:
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "grpc-js is not installed: `make node-deps`"
    done = subprocess.run(
        ["node", "grpc_cases.mjs", front_door, case], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"node case {case} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_the_protos_load_with_their_imports_from_the_repo(front_door):
    assert {"GenerateText", "StreamGenerateText", "Chat", "Embed"} <= set(run_case(front_door, "services")["methods"])


def test_generate_text_unary_and_streamed(front_door):
    reply = run_case(front_door, "generate")
    assert reply["text"].strip() and reply["model"] == "gemma-3-270m"
    assert reply["finish_reason"] == "FINISH_REASON_LENGTH" and reply["usage"]["output_tokens"] == 8
    streamed = run_case(front_door, "stream")
    assert streamed["text"] == reply["text"] and streamed["last"]["finish_reason"] == "FINISH_REASON_LENGTH"


def test_bad_input_is_invalid_argument_with_the_reason(front_door):
    seen = run_case(front_door, "bad_request")
    assert seen["code"] == 3 and "temperature" in seen["details"]  # INVALID_ARGUMENT
