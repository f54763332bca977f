"""OpenAI request shapes (parsed with pydantic) and response shapes (plain dicts).

Only what this mesh can honour is accepted; a field it cannot honour (n > 1, token-array
inputs, other embedding dimensions) is a 400 naming the field, never silently ignored.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh_runtime.errors import InvalidArgument

ROLES = {
    "system": types.ROLE_SYSTEM,
    "developer": types.ROLE_SYSTEM,
    "user": types.ROLE_USER,
    "assistant": types.ROLE_ASSISTANT,
}
FINISH = {types.FINISH_REASON_STOP: "stop", types.FINISH_REASON_LENGTH: "length"}


class _Request(BaseModel):
    # Unknown fields are tolerated, as OpenAI-compatible servers do: SDKs add new ones often.
    model_config = ConfigDict(extra="ignore")


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="An extension, as vLLM has it.")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model}
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            fields["max_tokens"] = limit
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.repetition_penalty is not None:
            fields["repetition_penalty"] = self.repetition_penalty
        fields["stop_sequences"] = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return fields


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)

    def to_proto(self) -> pb.ChatRequest:
        messages = [pb.ChatMessage(role=ROLES[m.role], content=m.text()) for m in self.messages]
        return pb.ChatRequest(messages=messages, **self.sampling_fields())


class CompletionRequest(_Sampling):
    prompt: str

    def to_proto(self) -> pb.GenerateTextRequest:
        return pb.GenerateTextRequest(prompt=self.prompt, **self.sampling_fields())


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="Text or texts; token arrays are not supported.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("must not be empty")
        return value

    def to_proto(self) -> pb.EmbedRequest:
        inputs = [self.input] if isinstance(self.input, str) else self.input
        return pb.EmbedRequest(model=self.model, inputs=inputs)


def parse(model: type[_Request], body: bytes) -> Any:
    """Parse a JSON body into `model`, or raise INVALID_ARGUMENT saying what is wrong."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8, nesting past the parser's depth
        raise InvalidArgument(f"request body is not valid JSON: {exc}", reason="INVALID_JSON") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", reason="INVALID_JSON")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        fields = ",".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise InvalidArgument(f"invalid request: {problems}", reason="INVALID_REQUEST_FIELDS", fields=fields) from exc


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_dict(usage: types.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def finish_reason(reason: int) -> str | None:
    return FINISH.get(reason)


def encode_embedding(values: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    return list(values)


def model_dict(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "infermesh"}


def error_event(code: str, message: str) -> dict[str, Any]:
    """The in-band error a stream sends when it fails after it has started."""
    return {"error": {"message": message, "type": "server_error", "code": code}}
