"""The backend contract's data-plane calls, by name: what each needs of a model and
what it answers with."""

from __future__ import annotations

import enum

from google.protobuf.message import Message

from infermesh.inference.v1 import inference_service_pb2 as pb


class Rpc(enum.Enum):
    GENERATE_TEXT = ("GenerateText", "text-generation", pb.GenerateTextResponse)
    CHAT = ("Chat", "chat", pb.ChatResponse)
    EMBED = ("Embed", "embedding", pb.EmbedResponse)
    DESCRIBE_IMAGE = ("DescribeImage", "image-description", pb.DescribeImageResponse)

    def __init__(self, method: str, capability: str, reply_type: type[Message]) -> None:
        self.method = method  # the contract's method name (its unary form)
        self.capability = capability  # what a model needs to answer it
        self.reply_type = reply_type
