"""Inference server settings, from the environment (names follow the seed documents)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ByteSize, Field

from services.runtime.settings import CommaList, ServiceSettings


class InferenceSettings(ServiceSettings):
    models: CommaList = Field(
        ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"],
        description="Model ids to preload at start-up, comma-separated.",
    )
    available_models: CommaList = Field(
        [
            "gemma-3-270m-llamacpp",
            "all-minilm-l6-v2-onnx",
            "whisper-base",
            "piper-en-us-joe",
            "pp-ocrv6",
            "mobilenet-v2",
        ],
        description="Further model ids this server may load on demand (the preload list is always available).",
    )
    model_specs: str = Field(
        "",
        description='More models, as JSON: [{"id": "...", "runtime": "transformers|llama.cpp|onnxruntime|ctranslate2|piper|rapidocr|torch", '
        '"task": "text-generation|embedding|transcription|speech-synthesis|ocr|image-classification", '
        '"path": "HF dir, GGUF file, ONNX or CTranslate2 dir, Piper voice file"}].',
    )
    lazy_load: bool = Field(True, description="Load an available model on its first request.")
    memory_budget: ByteSize | None = Field(
        None, description="Memory models may hold (e.g. 2GiB); least recently used models are evicted to fit."
    )
    gpu_memory_limit: ByteSize | None = Field(None, description="The budget on a GPU (DEVICE=cuda:N).")
    idle_unload_seconds: float = Field(0, ge=0, description="Unload a model unused this long; 0 never does.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N.")
    dtype: str = Field(
        "auto", description="auto, bfloat16, float16 or float32; auto picks bf16 where the hardware is fast at it."
    )
    max_concurrent_inferences: int = Field(1, ge=1, le=256, description="Calls one model runs at once.")
    max_context_tokens: int = Field(8192, ge=16, description="Cap on prompt + completion tokens per request.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request leaves it unset.")
    max_audio_seconds: float = Field(
        600, gt=0, description="The longest audio one transcription takes (longer: 400 AUDIO_TOO_LONG)."
    )
    torch_threads: int = Field(0, ge=0, description="Intra-op threads; 0 uses the CPUs this process may run on.")
    data_dir: Path = Field(Path(".data"), description="Where prepared model weights are cached.")

    generation_batching: bool = Field(True, description="Continuous batching for text generation.")
    max_batch_size: int = Field(32, ge=1, le=512, description="Requests decoded together in one batch.")
    max_queue_size: int = Field(
        256, ge=1, description="Generation requests admitted per model (running + waiting); more get 429."
    )
    kv_cache_blocks: int = Field(128, ge=8, description="Pages of KV cache for the batch (page size 256 tokens).")
    max_batch_tokens: int = Field(1024, ge=64, description="Tokens per forward pass (prefill chunks + decodes).")
    embed_max_batch_size: int = Field(128, ge=1, description="Texts embedded together in one forward pass.")
    embed_max_queue_delay_ms: float = Field(
        2.0, ge=0, description="How long the first text of a batch waits for company."
    )
    embed_instances: int = Field(
        0,
        ge=0,
        le=64,
        description="Embedding batches run side by side, each on its share of the threads (Triton's instance "
        "count); 0: two on a CPU with two or more cores, one on a GPU.",
    )
    embed_max_queue_items: int = Field(8192, ge=1, description="Texts waiting per embedding model; more get 429.")

    @property
    def budget_bytes(self) -> int | None:
        limit = self.gpu_memory_limit if self.device.startswith("cuda") else None
        limit = limit or self.memory_budget
        return int(limit) if limit is not None else None
