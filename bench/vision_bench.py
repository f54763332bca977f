"""`make bench`: images, through the inference server's core on the models it serves.

- image classification (MobileNetV2): images/s one request at a time vs the same
  requests sent together, which the core's dynamic batcher runs in shared passes;
- OCR (PP-OCRv6 small): seconds per rendered invoice page.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)

from services.inference.core import EmbedBatching, InferenceCore  # noqa: E402
from services.inference.models.builtin import (  # noqa: E402
    BUILTIN_SPECS,
    MOBILENET_ID,
    PP_OCR_ID,
    BuildOptions,
    build_model,
)
from services.inference.repository import ModelRepository  # noqa: E402


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def photos(count: int) -> list[bytes]:
    """`count` different 640×480 images (gradients with shapes): the model's cost does not
    depend on what they show."""
    images = []
    for i in range(count):
        image = Image.new("RGB", (640, 480), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        ImageDraw.Draw(image).ellipse((40 + i, 60, 400 + i, 420), fill=((i * 13) % 256, 120, 200))
        images.append(png(image))
    return images


def invoice() -> bytes:
    image = Image.new("RGB", (900, 460), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=34)
    for i, line in enumerate(["INVOICE No. 2026-0417", "Bill to: Acme Robotics Ltd", "Total due: EUR 7.00"]):
        draw.text((40, 30 + i * 75), line, fill="black", font=font)
    return png(image)


async def run(rounds: int, count: int) -> None:
    threads = len(os.sched_getaffinity(0))
    options = BuildOptions(data_dir=ROOT / ".data", device="cpu", dtype="auto", max_context=2048, threads=threads)
    executor = ThreadPoolExecutor(2)
    models = [build_model(BUILTIN_SPECS[m], options) for m in (MOBILENET_ID, PP_OCR_ID)]
    repository = ModelRepository(models, executor, max_concurrent=1)
    core = InferenceCore(repository, executor, 64, EmbedBatching(32, 0.002, 1024))
    for model in (MOBILENET_ID, PP_OCR_ID):
        await repository.load(model)
    images = photos(count)
    await core.classify_image(MOBILENET_ID, images[0], "image/png", 5)  # warm
    print(f"vision bench on {cpu_name()} ({threads} threads), {rounds} rounds of {count} images")
    alone, together, pages = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for image in images:
            await core.classify_image(MOBILENET_ID, image, "image/png", 5)
        alone.append(count / (time.perf_counter() - started))
        started = time.perf_counter()
        await asyncio.gather(*(core.classify_image(MOBILENET_ID, image, "image/png", 5) for image in images))
        together.append(count / (time.perf_counter() - started))
        started = time.perf_counter()
        await core.extract_text(PP_OCR_ID, invoice(), "image/png")
        pages.append(time.perf_counter() - started)
    one, batched = statistics.median(alone), statistics.median(together)
    print(
        f"image classification (mobilenet-v2): one at a time {one:.1f} images/s, {count} at once "
        f"(dynamic batching) {batched:.1f} images/s = {batched / one:.2f}x"
    )
    print(f"OCR (pp-ocrv6): {statistics.median(pages):.2f} s per invoice page (3 lines, 900×460)")
    await core.close()
    await repository.stop_all()
    executor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.images))


if __name__ == "__main__":
    main()
