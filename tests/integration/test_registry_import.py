"""Importing model artifacts into the registry's artifact store as long-running
operations: a real model directory (all-MiniLM-L6-v2 from its package) from a file://
source, a file over real HTTP from a server started in the test, checksum checks, and
the errors a caller gets at once."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import grpc
import pytest
import pytest_asyncio
from google.longrunning import operations_pb2

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from services.inference.models.builtin import minilm_path
from support.databases import database
from support.polling import eventually_async
from support.ports import free_port
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def registry():
    with database("sqlite") as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            yield server.registry, data_dir


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A plain HTTP server (the standard library's) serving a directory."""
    root = tmp_path_factory.mktemp("http")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def finished(registry, operation: operations_pb2.Operation) -> operations_pb2.Operation:
    if operation.done:
        return operation
    return await eventually_async(
        lambda: registry.GetOperation(operations_pb2.GetOperationRequest(name=operation.name)),
        until=lambda latest: latest.done,
        timeout=30,
        interval=0.05,
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_model_directory_is_imported_checked_and_registered(registry):
    stub, data_dir = registry
    source = minilm_path()
    started = await stub.ImportModelVersion(
        pb.ImportModelVersionRequest(
            parent="models/all-minilm-l6-v2",
            model_version_id="imported",
            source_uri=source.as_uri(),
            model_version=res.ModelVersion(runtime=res.RuntimeSpec(runtime="transformers")),
        )
    )
    assert not started.done and started.name.startswith("operations/")
    done = await finished(stub, started)
    assert not done.HasField("error"), done.error
    version = res.ModelVersion()
    done.response.Unpack(version)
    metadata = pb.ImportModelVersionMetadata()
    done.metadata.Unpack(metadata)
    assert metadata.stage == "done" and metadata.progress_percent == 100
    files = [p for p in source.rglob("*") if p.is_file()]
    assert metadata.bytes_total == version.artifact_size_bytes == sum(p.stat().st_size for p in files)
    copied = Path(unquote(urlparse(version.artifact_uri).path))
    assert copied.is_relative_to(data_dir / "artifacts" / "all-minilm-l6-v2" / "imported")
    for original in files:
        assert sha256_of(copied / original.relative_to(source)) == sha256_of(original)
    manifest = "".join(f"{sha256_of(p)}  {p.relative_to(source).as_posix()}\n" for p in sorted(files))
    assert version.artifact_sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert await stub.GetModelVersion(pb.GetModelVersionRequest(name=version.name)) == version
    # Deleting the version deletes its copy; the package it came from is untouched.
    await stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=version.name))
    assert not copied.exists() and source.exists()


async def test_a_file_is_downloaded_over_http_and_its_checksum_enforced(registry, http_root):
    stub, data_dir = registry
    root, base = http_root
    weights = root / "model.gguf"
    weights.write_bytes(bytes(range(256)) * 20_000)  # 5 MB
    wrong = "0" * 64
    rejected = await finished(
        stub,
        await stub.ImportModelVersion(
            pb.ImportModelVersionRequest(
                parent="models/gemma-3-270m", model_version_id="http-bad", source_uri=f"{base}/model.gguf", sha256=wrong
            )
        ),
    )
    assert rejected.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "SHA-256" in rejected.error.message
    assert not (data_dir / "artifacts" / "gemma-3-270m" / "http-bad").exists()
    assert not any((data_dir / "artifacts" / "gemma-3-270m").glob(".*partial"))
    missing = stub.GetModelVersion(pb.GetModelVersionRequest(name="models/gemma-3-270m/versions/http-bad"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await missing
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    accepted = await finished(
        stub,
        await stub.ImportModelVersion(
            pb.ImportModelVersionRequest(
                parent="models/gemma-3-270m",
                model_version_id="http-good",
                source_uri=f"{base}/model.gguf",
                sha256=sha256_of(weights),
                model_version=res.ModelVersion(runtime=res.RuntimeSpec(runtime="llama.cpp", file="model.gguf")),
            )
        ),
    )
    version = res.ModelVersion()
    accepted.response.Unpack(version)
    assert version.artifact_sha256 == sha256_of(weights) and version.artifact_size_bytes == weights.stat().st_size
    assert Path(unquote(urlparse(version.artifact_uri).path)).read_bytes() == weights.read_bytes()
    assert version.runtime.runtime == "llama.cpp" and not version.is_default

    gone = await finished(
        stub,
        await stub.ImportModelVersion(
            pb.ImportModelVersionRequest(
                parent="models/gemma-3-270m", model_version_id="http-404", source_uri=f"{base}/no-such-file"
            )
        ),
    )
    assert gone.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "404" in gone.error.message


async def test_bad_imports_fail_at_once(registry):
    stub, _ = registry
    cases = [
        (
            pb.ImportModelVersionRequest(parent="models/nope", model_version_id="v1", source_uri="file:///tmp"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.ImportModelVersionRequest(
                parent="models/gemma-3-270m", model_version_id="bf16", source_uri="file:///tmp"
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            pb.ImportModelVersionRequest(
                parent="models/gemma-3-270m", model_version_id="v9", source_uri="file:///no/such/path"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ImportModelVersionRequest(parent="models/gemma-3-270m", model_version_id="v9", source_uri="ftp://x/y"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ImportModelVersion(request)
        assert error.value.code() == code, request
