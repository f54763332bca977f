"""Where the repository, its virtual environment, generated descriptors and model
weights are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
DESCRIPTOR_SET = ROOT / "build" / "infermesh.binpb"


def data_dir() -> Path:
    """Prepared model weights: DATA_DIR as `make` sets it, else the repository's .data."""
    return Path(os.environ.get("DATA_DIR", ROOT / ".data"))
