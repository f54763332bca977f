"""Snapshots of a collection's HNSW index next to its SQLite file, so a restart loads the
graph instead of rebuilding it (a rebuild is minutes at a million points).

A snapshot is `{id}.{seq}.hnsw`: hnswlib's own file of the index as it was after the
collection's write number `seq`. It is written to a temporary name, flushed to disk, and
renamed into place (a crash leaves the previous snapshot or none, never half of one);
older ones are removed after. The SQLite file stays the record: whatever was written
after `seq` is replayed from it on load (embedded.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import hnswlib


def _pattern(stem: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem.name)}\.(\d+)\.hnsw$")


def latest(stem: Path, at_most: int) -> tuple[int, Path] | None:
    """The newest snapshot of the collection whose file is `stem`.db taken at or before
    write `at_most` (one from later writes than the file has cannot be trusted)."""
    pattern = _pattern(stem)
    found = [
        (int(match.group(1)), path)
        for path in stem.parent.glob(f"{stem.name}.*.hnsw")
        if (match := pattern.match(path.name)) and int(match.group(1)) <= at_most
    ]
    return max(found) if found else None


def save(index: hnswlib.Index, stem: Path, seq: int) -> None:
    """Write the index as the snapshot after write `seq`; remove older ones."""
    final = stem.parent / f"{stem.name}.{seq}.hnsw"
    temporary = stem.parent / f"{stem.name}.hnsw.tmp"
    index.save_index(str(temporary))
    with open(temporary, "rb") as written:
        os.fsync(written.fileno())
    os.replace(temporary, final)
    directory = os.open(stem.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    remove(stem, keep=final)


def remove(stem: Path, keep: Path | None = None) -> None:
    """Remove every snapshot file of the collection (finished or not) but `keep`."""
    for path in stem.parent.glob(f"{stem.name}.*hnsw*"):
        if path != keep:
            path.unlink(missing_ok=True)
