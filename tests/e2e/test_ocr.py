"""OCR through the front door (the native API: REST and gRPC): a rendered invoice read
back exactly by PP-OCRv6, loaded by the inference server on its first request; a file
that is not the image it claims is a 400 before any model sees it."""

from __future__ import annotations

import base64

import grpc
import httpx

from infermesh.router.v1 import router_messages_pb2 as pb
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from support.documents import INVOICE_LINES, invoice_png
from support.metrics import metric

OCR = "pp-ocrv6"


def test_a_rendered_invoice_is_read_exactly_over_rest(base_url, mesh):
    router = mesh.settings.router_metrics_port
    images_before = metric(router, "infermesh_router_images_total", model=OCR)
    body = {"model": OCR, "image": base64.b64encode(invoice_png()).decode(), "mime_type": "image/png"}
    reply = httpx.post(f"{base_url}/v1/extract-text", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    found = reply.json()
    assert found["text"].split("\n") == list(INVOICE_LINES) and found["model"] == OCR
    assert [line["text"] for line in found["lines"]] == list(INVOICE_LINES)
    assert all(len(line["box"]) == 4 for line in found["lines"])
    assert reply.headers["x-infermesh-model"] == OCR
    assert metric(router, "infermesh_router_images_total", model=OCR) - images_before == 1


def test_grpc_clients_get_the_same_lines(front_door):
    with grpc.insecure_channel(front_door) as channel:
        reply = router_grpc.RouterServiceStub(channel).ExtractText(
            pb.ExtractTextRequest(model=OCR, image=invoice_png(), mime_type="image/png"), timeout=120
        )
    assert [line.text for line in reply.lines] == list(INVOICE_LINES)


def test_a_file_that_is_not_the_image_it_claims_is_a_400(base_url):
    for image, mime_type, reason in [
        (b"plain text, no image", "image/png", "IMAGE_NOT_DECODABLE"),
        (invoice_png(), "image/webp", "IMAGE_TYPE_MISMATCH"),
    ]:
        body = {"model": OCR, "image": base64.b64encode(image).decode(), "mime_type": mime_type}
        reply = httpx.post(f"{base_url}/v1/extract-text", json=body, timeout=60)
        assert reply.status_code == 400 and reply.json()["details"][0]["reason"] == reason, reply.text


def test_a_model_that_cannot_read_is_told_so(base_url):
    body = {"model": "whisper-base", "image": base64.b64encode(invoice_png()).decode(), "mime_type": "image/png"}
    reply = httpx.post(f"{base_url}/v1/extract-text", json=body, timeout=60)
    assert reply.status_code == 400 and "ocr" in reply.json()["message"], reply.text
