"""Image inputs checked before any model sees them: the bytes must decode as the image
type the request says (Pillow reads the header and verifies the structure without
decoding every pixel), within a size a vision model can take. A request that fails gets
INVALID_ARGUMENT saying why, instead of a backend error or a provider's bill."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from services.runtime.errors import InvalidArgument

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
MAX_PIXELS = 64_000_000  # 8000 × 8000: beyond any vision model's input, and a decompression-bomb guard


def check_image(data: bytes, mime_type: str) -> None:
    expected = FORMATS.get(mime_type)
    try:
        with Image.open(io.BytesIO(data)) as image:
            found, (width, height) = image.format, image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(
            f"the image cannot be decoded as {mime_type or 'an image'}: {exc}",
            reason="IMAGE_NOT_DECODABLE",
            mime_type=mime_type,
        ) from None
    if expected is not None and found != expected:
        raise InvalidArgument(
            f"the image is {found}, not the {mime_type} the request says",
            reason="IMAGE_TYPE_MISMATCH",
            mime_type=mime_type,
            found=found,
        )
    if width * height > MAX_PIXELS:
        raise InvalidArgument(
            f"the image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels are accepted",
            reason="IMAGE_TOO_LARGE",
            width=width,
            height=height,
        )
