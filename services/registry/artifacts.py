"""The artifact store: model files copied under one directory, one folder per version.

An import copies into a hidden `.partial` folder next to its target and renames it into
place only once every byte is there and checked, so a version's folder is either whole
or absent (an interrupted import leaves nothing a loader could pick up).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from services.runtime.errors import AlreadyExists, InvalidArgument, Unavailable

CHUNK = 1 << 20
Progress = Callable[[int, int], None]  # (bytes copied, bytes in all; 0 when unknown)


@dataclass(frozen=True)
class Artifact:
    uri: str
    sha256: str
    size_bytes: int


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._importing: set[Path] = set()

    def target(self, model_id: str, version_id: str) -> Path:
        return self.root / model_id / version_id

    def check_source(self, source_uri: str) -> None:
        """Fail before an operation starts when a local source is not there."""
        parsed = urlparse(source_uri)
        if parsed.scheme == "file" and not Path(unquote(parsed.path)).exists():
            raise InvalidArgument(
                f"source {source_uri} does not exist on the registry's machine",
                reason="SOURCE_NOT_FOUND",
                source_uri=source_uri,
            )

    async def import_artifact(
        self, source_uri: str, model_id: str, version_id: str, expected_sha256: str, progress: Progress
    ) -> Artifact:
        target = self.target(model_id, version_id)
        if target in self._importing:
            raise AlreadyExists(
                f"{model_id}/{version_id} is being imported already", reason="IMPORT_IN_PROGRESS", path=str(target)
            )
        self._importing.add(target)
        try:
            return await self._import(source_uri, target, expected_sha256, progress)
        finally:
            self._importing.discard(target)

    async def _import(self, source_uri: str, target: Path, expected_sha256: str, progress: Progress) -> Artifact:
        # The caller checked that no version owns `target`: anything there is left over
        # from an import that was cut short after it was placed, and goes.
        shutil.rmtree(target, ignore_errors=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def report(copied: int, total: int) -> None:
            loop.call_soon_threadsafe(progress, copied, total)

        parsed = urlparse(source_uri)
        try:
            if parsed.scheme == "file":
                source = Path(unquote(parsed.path))
                digest, size = await asyncio.to_thread(_copy_local, source, partial, report, stop)
                name = source.name if source.is_file() else ""
            else:
                name = Path(unquote(parsed.path)).name or "artifact"
                digest, size = await _download(source_uri, partial / name, report, stop)
            if expected_sha256 and digest != expected_sha256:
                raise InvalidArgument(
                    f"the artifact's SHA-256 is {digest}, not {expected_sha256}",
                    reason="CHECKSUM_MISMATCH",
                    sha256=digest,
                    expected=expected_sha256,
                )
            os.replace(partial, target)
        except BaseException:
            stop.set()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        path = target / name if name else target
        return Artifact(path.resolve().as_uri(), digest, size)

    def remove(self, model_id: str, version_id: str) -> None:
        shutil.rmtree(self.target(model_id, version_id), ignore_errors=True)

    def discard(self, artifact_uri: str) -> None:
        """Delete a deleted version's artifact, if it is one this store holds (artifacts
        elsewhere, such as packages or provider models, are never touched)."""
        parsed = urlparse(artifact_uri)
        if parsed.scheme != "file":
            return
        path = Path(unquote(parsed.path)).resolve()
        root = self.root.resolve()
        if not path.is_relative_to(root):
            return
        parts = path.relative_to(root).parts  # model, version[, file]
        if len(parts) >= 2:
            shutil.rmtree(root / parts[0] / parts[1], ignore_errors=True)


def _files(source: Path) -> Iterator[tuple[Path, str]]:
    if source.is_file():
        yield source, source.name
        return
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        yield path, path.relative_to(source).as_posix()


def _copy_local(source: Path, into: Path, report: Progress, stop: threading.Event) -> tuple[str, int]:
    """Copy a file (into `into/<name>`) or a directory's files (into `into/...`), hashing
    as it goes; the digest of a file, or of a directory's manifest."""
    files = list(_files(source))
    total = sum(path.stat().st_size for path, _ in files)
    copied, manifest = 0, []
    for path, relative in files:
        destination = into / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "rb") as reader, open(destination, "wb") as writer:
            while chunk := reader.read(CHUNK):
                if stop.is_set():
                    raise InterruptedError("import cancelled")
                writer.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                report(copied, total)
            writer.flush()
            os.fsync(writer.fileno())
        manifest.append(f"{digest.hexdigest()}  {relative}\n")
    if source.is_file():
        return manifest[0].split()[0], total
    return hashlib.sha256("".join(manifest).encode()).hexdigest(), total


async def _download(url: str, destination: Path, report: Progress, stop: threading.Event) -> tuple[str, int]:
    try:
        return await _stream_to_file(url, destination, report, stop)
    except httpx.HTTPError as exc:
        raise Unavailable(f"downloading {url} failed: {exc}", reason="SOURCE_UNAVAILABLE", source_uri=url) from None


async def _stream_to_file(url: str, destination: Path, report: Progress, stop: threading.Event) -> tuple[str, int]:
    digest, copied = hashlib.sha256(), 0
    async with httpx.AsyncClient(follow_redirects=True, timeout=httpx.Timeout(30.0, read=300.0)) as client:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidArgument(
                    f"{url} answered HTTP {response.status_code}", reason="SOURCE_UNAVAILABLE", source_uri=url
                )
            total = int(response.headers.get("content-length") or 0)
            with open(destination, "wb") as writer:
                async for chunk in response.aiter_bytes(CHUNK):
                    if stop.is_set():
                        raise InterruptedError("import cancelled")
                    await asyncio.to_thread(writer.write, chunk)
                    digest.update(chunk)
                    copied += len(chunk)
                    report(copied, total)
                await asyncio.to_thread(os.fsync, writer.fileno())
    return digest.hexdigest(), copied
