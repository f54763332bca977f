"""Image classification through the front door (REST and gRPC): MobileNetV2, loaded by
the inference server on its first request, names what sample photos show."""

from __future__ import annotations

import base64

import grpc
import httpx

from infermesh.router.v1 import router_messages_pb2 as pb
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from support.documents import photo_png
from support.metrics import metric

CLASSIFIER = "mobilenet-v2"


def test_a_photo_of_coffee_is_an_espresso(base_url, mesh):
    router = mesh.settings.router_metrics_port
    before = metric(router, "infermesh_router_images_total", model=CLASSIFIER)
    body = {"model": CLASSIFIER, "image": base64.b64encode(photo_png("coffee")).decode(), "mime_type": "image/png"}
    reply = httpx.post(f"{base_url}/v1/classify-image", json={**body, "top_k": 3}, timeout=120)
    assert reply.status_code == 200, reply.text
    labels = reply.json()["labels"]
    assert len(labels) == 3 and labels[0]["label"] == "espresso" and labels[0]["score"] > 0.9
    assert metric(router, "infermesh_router_images_total", model=CLASSIFIER) - before == 1


def test_grpc_clients_get_five_classes_by_default(front_door):
    with grpc.insecure_channel(front_door) as channel:
        reply = router_grpc.RouterServiceStub(channel).ClassifyImage(
            pb.ClassifyImageRequest(model=CLASSIFIER, image=photo_png("chelsea"), mime_type="image/png"), timeout=120
        )
    assert len(reply.labels) == 5 and "cat" in " ".join(x.label for x in reply.labels[:3]).lower()


def test_bad_requests_are_400s_naming_the_problem(base_url):
    photo = base64.b64encode(photo_png("coffee")).decode()
    cases = [
        ({"image": photo, "mime_type": "image/png", "top_k": 50}, "top_k"),
        ({"image": base64.b64encode(b"no image").decode(), "mime_type": "image/png"}, "IMAGE_NOT_DECODABLE"),
    ]
    for body, named in cases:
        reply = httpx.post(f"{base_url}/v1/classify-image", json={"model": CLASSIFIER, **body}, timeout=60)
        assert reply.status_code == 400 and named in reply.text, reply.text
