"""Fakes for the router's core (services/router/core): a resolver with fixed routes and
fallbacks, backends that answer, fail or stall as a test scripts them, and a clock a
test moves by hand. No sockets, no gRPC."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from infermesh.inference.v1 import inference_service_pb2 as inference_pb
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh.router.v1 import router_messages_pb2 as pb
from services.router.core.backend import BackendError
from services.router.core.load import ModelLoad
from services.router.core.resolvers import Route
from services.router.core.rpcs import Rpc
from services.runtime.errors import NotFound


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeResolver:
    """Model `m` is served by backend `m-backend`, with the fallbacks, context windows and
    capabilities given (every capability when none are); `auto` ranks the models in the
    order given."""

    def __init__(
        self, models: list[str], fallbacks: dict[str, tuple[str, ...]] | None = None, windows=None, capabilities=None
    ) -> None:
        self._models = models
        self._fallbacks = fallbacks or {}
        self._windows = windows or {}
        self._capabilities: dict[str, set[str]] = capabilities or {}

    def route(self, requested: str) -> Route:
        model = requested.partition("@")[0]
        if model not in self._models:
            raise NotFound(f"model {model!r} is not registered", reason="MODEL_NOT_FOUND", model=model)
        return Route(model, "v1", f"{model}-backend", model, context_window_tokens=self._windows.get(model, 0))

    def ranked(self, capability: str, strategy: str, load: ModelLoad) -> list[str]:
        return list(self._models)

    def fallbacks(self, requested: str) -> tuple[str, ...]:
        return self._fallbacks.get(requested.partition("@")[0], ())

    def context_window(self, model: str) -> int | None:
        return self._windows.get(model.partition("@")[0])

    def capable(self, model: str, capability: str) -> bool:
        known = self._capabilities.get(model.partition("@")[0])
        return known is None or capability in known

    def models(self) -> list[str]:
        return list(self._models)

    requestable = routable = models


def failure(code: int, message: str = "it failed", reason: str = "", **metadata: str) -> BackendError:
    """A backend's failure as it would arrive over the wire."""
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2

    status = status_pb2.Status(code=code, message=message)
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="infermesh.dev", metadata=metadata))
        status.details.append(detail)
    return BackendError(status)


UNAVAILABLE = code_pb2.UNAVAILABLE
INVALID_ARGUMENT = code_pb2.INVALID_ARGUMENT


@dataclass
class Script:
    """What a backend does on its next call: answer `text`, fail, or stall first."""

    text: str = ""
    error: BackendError | None = None
    delay: float = 0.0
    fail_after_chunks: int | None = None  # a stream that breaks after this many chunks


@dataclass
class FakeBackends:
    """Backends by catalog name. Each call takes the backend's next Script (or answers
    "<backend> answers" when none is left); every call is recorded."""

    scripts: dict[str, deque[Script]] = field(default_factory=lambda: defaultdict(deque))
    calls: list[tuple[Rpc, str, Message]] = field(default_factory=list)
    closed: bool = False

    def script(self, backend: str, *steps: Script) -> None:
        self.scripts[backend].extend(steps)

    def called(self, backend: str) -> int:
        return sum(1 for _, name, _ in self.calls if name == backend)

    async def _next(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> Script:
        self.calls.append((rpc, backend, request))
        step = self.scripts[backend].popleft() if self.scripts[backend] else Script()
        if step.delay:
            if step.delay > timeout:
                await asyncio.sleep(timeout)
                raise failure(code_pb2.DEADLINE_EXCEEDED, "deadline exceeded")
            await asyncio.sleep(step.delay)
        if step.error is not None and step.fail_after_chunks is None:
            raise step.error
        return step

    async def call(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> Message:
        step = await self._next(rpc, request, backend, timeout)
        text = step.text or f"{backend} answers"
        usage = types.Usage(input_tokens=3, output_tokens=2, total_tokens=5)
        if rpc is Rpc.EMBED:
            vectors = [
                inference_pb.Embedding(index=i, values=[float(len(t)), 1.0], input_tokens=1)
                for i, t in enumerate(request.inputs)
            ]
            return pb.EmbedResponse(
                embeddings=vectors, usage=types.Usage(input_tokens=len(vectors)), model=request.model
            )
        if rpc is Rpc.CHAT:
            message = inference_pb.ChatMessage(role=types.ROLE_ASSISTANT, content=text)
            return pb.ChatResponse(message=message, finish_reason=types.FINISH_REASON_STOP, usage=usage)
        return pb.GenerateTextResponse(text=text, finish_reason=types.FINISH_REASON_STOP, usage=usage)

    async def stream(self, rpc: Rpc, request: Message, backend: str, timeout: float) -> AsyncIterator[Message]:
        step = await self._next(rpc, request, backend, timeout)
        words = (step.text or f"{backend} answers in words").split()
        for index, word in enumerate(words):
            if step.fail_after_chunks is not None and index == step.fail_after_chunks:
                raise step.error
            last = index == len(words) - 1
            yield pb.GenerateTextResponse(
                text=word + " ",
                finish_reason=types.FINISH_REASON_STOP if last else types.FINISH_REASON_UNSPECIFIED,
                usage=types.Usage(input_tokens=3, output_tokens=len(words), total_tokens=3 + len(words))
                if last
                else None,
            )

    async def close(self) -> None:
        self.closed = True
