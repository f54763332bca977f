"""Inference server settings, from the environment (names follow the seed documents)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from infermesh_runtime.settings import CommaList, ServiceSettings


class InferenceSettings(ServiceSettings):
    models: CommaList = Field(
        ["gemma-3-270m", "all-minilm-l6-v2"], description="Model ids to preload, comma-separated."
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N.")
    dtype: str = Field(
        "auto", description="auto, bfloat16, float16 or float32; auto picks bf16 where the hardware is fast at it."
    )
    max_concurrent_inferences: int = Field(1, ge=1, le=256, description="Calls one model runs at once.")
    max_context_tokens: int = Field(8192, ge=16, description="Cap on prompt + completion tokens per request.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request leaves it unset.")
    torch_threads: int = Field(0, ge=0, description="Intra-op threads; 0 uses the CPUs this process may run on.")
    data_dir: Path = Field(Path(".data"), description="Where prepared model weights are cached.")
