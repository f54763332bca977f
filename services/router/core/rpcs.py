"""The backend contract's data-plane calls, by name: what each needs of a model and
what it answers with. The router holds its own messages (router_messages.proto), which
are the backend's field for field plus routing and the stream error: a request goes to
a backend as it is (routing cleared), a reply comes back parsed as the router's type."""

from __future__ import annotations

import enum

from google.protobuf.message import Message

from infermesh.router.v1 import router_messages_pb2 as pb


class Rpc(enum.Enum):
    GENERATE_TEXT = ("GenerateText", "text-generation", pb.GenerateTextResponse)
    CHAT = ("Chat", "chat", pb.ChatResponse)
    EMBED = ("Embed", "embedding", pb.EmbedResponse)
    DESCRIBE_IMAGE = ("DescribeImage", "image-description", pb.DescribeImageResponse)
    TRANSCRIBE = ("Transcribe", "transcription", pb.TranscribeResponse)
    SYNTHESIZE = ("Synthesize", "speech-synthesis", pb.SynthesizeResponse)  # streamed only
    EXTRACT_TEXT = ("ExtractText", "ocr", pb.ExtractTextResponse)
    CLASSIFY_IMAGE = ("ClassifyImage", "image-classification", pb.ClassifyImageResponse)

    def __init__(self, method: str, capability: str, reply_type: type[Message]) -> None:
        self.method = method  # the contract's method name (its unary form, where it has one)
        self.capability = capability  # what a model needs to answer it
        self.reply_type = reply_type  # the router's message the backend's reply parses as


def token_limit(request: Message) -> Message | None:
    """The message that holds a request's `max_tokens`: a generation's config, an image
    description's request itself; None for a call that generates nothing (Embed)."""
    holder = request.config if "config" in request.DESCRIPTOR.fields_by_name else request
    return holder if "max_tokens" in holder.DESCRIPTOR.fields_by_name else None
