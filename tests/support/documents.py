"""Images for the vision tests: an invoice rendered as a PNG with Pillow's own font (no
system fonts needed) and the lines printed on it, for OCR; sample photos, for
classification."""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw, ImageFont

INVOICE_LINES = (
    "INVOICE No. 2026-0417",
    "Date: 7 December 2026",
    "Bill to: Acme Robotics Ltd",
    "2 x GPU hours @ 3.50 = 7.00",
    "Total due: EUR 7.00",
)


@functools.cache
def invoice_png(lines: tuple[str, ...] = INVOICE_LINES) -> bytes:
    """`lines` printed in black on white, one under another, as PNG bytes."""
    image = Image.new("RGB", (900, 60 + 75 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=34)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * 75), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@functools.cache
def photo_png(name: str) -> bytes:
    """One of scikit-image's sample photos (shipped in its wheel: `chelsea` the cat,
    `coffee` a cup of espresso), as PNG bytes."""
    import skimage.data

    out = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(out, format="PNG")
    return out.getvalue()
