"""`python -m services.inference.prepare`: prepare the default models' weights ahead of
start-up (make run and make test do this), so the first start does not pay for it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from services.inference.models.builtin import minilm_path, prepare_gemma, qwen_coder_gguf

    data_dir = Path(os.environ.get("DATA_DIR", ".data"))
    started = time.monotonic()
    gemma = prepare_gemma(data_dir)
    print(f"gemma-3-270m weights: {gemma} ({time.monotonic() - started:.1f}s)")
    print(f"all-minilm-l6-v2 weights: {minilm_path()}")
    started = time.monotonic()
    qwen = qwen_coder_gguf(data_dir)
    print(f"qwen2.5-coder-0.5b-instruct weights (SHA-256 verified): {qwen} ({time.monotonic() - started:.1f}s)")


if __name__ == "__main__":
    main()
