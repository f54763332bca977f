"""OCR on the inference server's core with the real PP-OCRv6 models (RapidOCR on ONNX
Runtime): a rendered invoice comes back exactly, line by line in reading order with
where each line is; an image that does not decode as what it claims never reaches the
model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from services.inference.core import EmbedBatching, InferenceCore
from services.inference.models.builtin import BUILTIN_SPECS, PP_OCR_ID, BuildOptions, build_model
from services.inference.repository import ModelRepository
from services.runtime.errors import DomainError
from support.documents import INVOICE_LINES, invoice_png
from support.paths import data_dir


@pytest.fixture(scope="module")
async def core():
    options = BuildOptions(data_dir=data_dir(), device="cpu", dtype="auto", max_context=2048, threads=2)
    executor = ThreadPoolExecutor(2)
    repository = ModelRepository([build_model(BUILTIN_SPECS[PP_OCR_ID], options)], executor, max_concurrent=1)
    core = InferenceCore(repository, executor, 64, EmbedBatching(8, 0.001, 64))
    await repository.load(PP_OCR_ID)
    yield core
    await core.close()
    await repository.stop_all()
    executor.shutdown()


async def test_a_rendered_invoice_is_read_exactly_line_by_line(core):
    found = await core.extract_text(PP_OCR_ID, invoice_png(), "image/png")
    assert [line.text for line in found.lines] == list(INVOICE_LINES)
    assert found.text == "\n".join(INVOICE_LINES)
    assert all(line.confidence > 0.9 for line in found.lines)
    tops = [min(y for _, y in line.box) for line in found.lines]
    assert tops == sorted(tops) and all(len(line.box) == 4 for line in found.lines)


async def test_a_blank_page_has_no_text(core):
    blank = invoice_png(lines=())
    found = await core.extract_text(PP_OCR_ID, blank, "image/png")
    assert found.lines == () and found.text == ""


@pytest.mark.parametrize(
    ("image", "mime_type", "reason"),
    [
        (b"not an image at all", "image/png", "IMAGE_NOT_DECODABLE"),
        (invoice_png(), "image/jpeg", "IMAGE_TYPE_MISMATCH"),
    ],
)
async def test_an_image_that_is_not_what_it_claims_is_refused(core, image, mime_type, reason):
    with pytest.raises(DomainError) as refused:
        await core.extract_text(PP_OCR_ID, image, mime_type)
    assert refused.value.reason == reason and refused.value.status_code == 3
