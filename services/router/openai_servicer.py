"""The OpenAI-compatible surface, served as google.api.HttpBody through Envoy's transcoder.

One path serves streaming and non-streaming requests: the `stream` field decides.
A stream's first frame is sent only after the backends' first chunks arrive, so any
error before then (unknown model, a field that cannot be honoured, context too long)
is a real HTTP error; an error after that is an in-band `data: {"error": ...}` event.

Errors are in OpenAI's shape (runtime/openai_errors.py): the call itself succeeds with
the error's JSON as its body and the HTTP status in a header, which Envoy turns into
the response's status on these paths (the transcoder would otherwise write
google.rpc.Status JSON, which the SDKs cannot read).

`n` choices (and, for text completions, each of several prompts) are separate calls
through failover, run side by side: the inference server's continuous batching decodes
them together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import protovalidate
from google.api import httpbody_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from infermesh.openai.v1 import openai_service_pb2_grpc as pb_grpc
from services.authz.policy import Denied
from services.backend.images import check_image
from services.router import openai_replies as reply
from services.router import openai_schema as oa
from services.router.calls import announcer, call_context
from services.router.core import failover
from services.router.core.router import RouterCore
from services.router.core.rpcs import Rpc
from services.runtime import multipart_form
from services.runtime.errors import DomainError, InvalidArgument, NotFound, status_of
from services.runtime.interceptors import validation_status
from services.runtime.openai_errors import (
    HTTP_STATUS_HEADER,
    RETRY_AFTER_HEADER,
    TRANSCODED_PATH_HEADER,
    openai_error,
    retry_after_seconds,
)

log = logging.getLogger(__name__)
FAILURES = (grpc.aio.AioRpcError, DomainError, protovalidate.ValidationError, Denied)


def json_body(payload: dict[str, Any]) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(payload).encode())


def sse(payload: dict[str, Any] | str) -> httpbody_pb2.HttpBody:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return httpbody_pb2.HttpBody(content_type="text/event-stream", data=f"data: {data}\n\n".encode())


def _status(error: BaseException) -> status_pb2.Status:
    if isinstance(error, protovalidate.ValidationError):
        return validation_status(error)
    if isinstance(error, Denied):
        return error.status()
    return status_of(error)


def _transcoded(context) -> bool:
    """Whether the call came in on an OpenAI REST path (through Envoy's transcoder); a
    gRPC client calling this service itself gets gRPC errors."""
    return any(key == TRANSCODED_PATH_HEADER for key, _ in context.invocation_metadata() or ())


async def _error_reply(context, error: Exception) -> httpbody_pb2.HttpBody:
    """The OpenAI error body for a call that has sent nothing yet, with the headers that
    give the response its HTTP status (and Retry-After)."""
    if not isinstance(error, FAILURES):
        log.exception("unhandled error on the OpenAI surface", exc_info=error)
    if not _transcoded(context):
        raise error
    status = _status(error)
    http_status, body = openai_error(status)
    headers = [(HTTP_STATUS_HEADER, str(http_status))]
    if (wait := retry_after_seconds(status)) is not None:
        headers.append((RETRY_AFTER_HEADER, str(wait)))
    if isinstance(error, DomainError | Denied):
        headers.extend(error.headers.items())
    await context.send_initial_metadata(headers)
    return json_body(body)


async def refusal_reply(context, error: Exception) -> httpbody_pb2.HttpBody | None:
    """A call refused before it reached this servicer (services/router/authorization.py),
    answered in OpenAI's shape when it came in on an OpenAI REST path; None for a gRPC
    client calling the service itself, which gets a gRPC error."""
    if not _transcoded(context):
        return None
    return await _error_reply(context, error)


async def _answered(
    context, bodies: AsyncIterator[httpbody_pb2.HttpBody], in_band: bool = True
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """A reply's bodies; a failure before the first becomes an OpenAI error response, one
    after it (a stream midway) an in-band SSE error event, or with `in_band` False (audio
    and transcripts) a failed call, so the client sees a cut-off body, never error text
    appended to it."""
    started = False
    try:
        async for body in bodies:
            started = True
            yield body
    except Exception as exc:  # noqa: BLE001 - every failure is answered in OpenAI's shape
        if not started:
            yield await _error_reply(context, exc)
            return
        if not in_band:
            raise
        status = _status(exc)
        code = code_pb2.Code.Name(status.code)
        log.warning("stream failed after it started", extra={"code": code, "error": status.message})
        yield sse(reply.error_event(code, status.message or "stream failed"))


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """(stream index, item) from several streams as items arrive; a failure in any ends
    all of them."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except Exception as exc:  # noqa: BLE001 - raised on the merging side
            await queue.put((index, _Failed(exc)))
        await queue.put((index, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, _Failed):
                raise item.error
            if item is done:
                running -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def _copies(request: Message, n: int) -> list[Message]:
    """`n` copies of a request, one per choice; with a seed, choice i samples with seed + i
    (the same seed would give n identical choices)."""
    copies = []
    for i in range(n):
        copy = type(request)()
        copy.CopyFrom(request)
        if i and copy.config.HasField("seed"):
            copy.config.seed = (copy.config.seed + i) % 2**32
        copies.append(copy)
    return copies


class OpenAIServicer(pb_grpc.OpenAIServiceServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core
        self.created = int(time.time())

    async def _unary(self, rpc: Rpc, requests: list[Message], context) -> list[Any]:
        """Every request's reply (in order), announcing the first's route once all have
        answered; one failure fails the call."""
        call = call_context(context)
        calls = [asyncio.ensure_future(failover.unary(self.core, rpc, r, call)) for r in requests]
        try:
            answers = await asyncio.gather(*calls)
        except BaseException:
            for pending in calls:
                pending.cancel()
            raise
        cache = "hit" if all(a.cached for a in answers) else "miss" if any(a.looked_up for a in answers) else ""
        await announcer(context)(answers[0], cache)
        return [a.reply for a in answers]

    def _streams(self, rpc: Rpc, requests: list[Message], context) -> list[AsyncIterator[Any]]:
        # One stream announces who answers; several leave the headers alone.
        call, announce = call_context(context), announcer(context) if len(requests) == 1 else None
        return [failover.stream(self.core, rpc, r, call, announce, in_band_errors=False) for r in requests]

    async def CreateChatCompletion(self, request, context):
        async for body in _answered(context, self._chat_completion(request, context)):
            yield body

    async def _chat_completion(self, request, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
        body = oa.parse(oa.ChatCompletionRequest, request.body.data)
        ident, created = reply.completion_id("chatcmpl"), reply.now()
        if (image := body.image_request()) is not None:
            async for answer in self._image_completion(body, image, ident, created, context):
                yield answer
            return
        proto = body.to_proto()
        protovalidate.validate(proto)
        requests = _copies(proto, body.n)
        if not body.stream:
            replies = await self._unary(Rpc.CHAT, requests, context)
            choices = []
            for index, answer in enumerate(replies):
                choice = {
                    "index": index,
                    "message": reply.chat_message(answer),
                    "finish_reason": reply.finish_reason(answer.finish_reason),
                    "logprobs": reply.chat_logprobs(list(answer.logprobs)) if body.logprobs else None,
                }
                choices.append(choice)
            yield json_body(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": replies[0].model,
                    "choices": choices,
                    "usage": reply.usage_dict([r.usage for r in replies]),
                }
            )
            return

        def chunk(choices: list[dict[str, Any]], model: str) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }

        started: set[int] = set()
        usages = {}
        model = ""
        async for index, item in _merged(self._streams(Rpc.CHAT, requests, context)):
            model = item.model
            delta: dict[str, Any] = {}
            if index not in started:
                started.add(index)
                delta["role"] = "assistant"
                delta["content"] = None if item.message.tool_calls and not item.message.content else ""
            if item.message.content:
                delta["content"] = item.message.content
            if item.message.tool_calls:
                delta["tool_calls"] = reply.tool_call_deltas(list(item.message.tool_calls))
            finish = reply.finish_reason(item.finish_reason)
            logprobs = reply.chat_logprobs(list(item.logprobs)) if body.logprobs and item.logprobs else None
            if delta or finish or logprobs:
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
                yield sse(chunk([choice], model))
            if finish:
                usages[index] = item.usage
        if body.stream_options and body.stream_options.include_usage:
            yield sse({**chunk([], model), "usage": reply.usage_dict(list(usages.values()))})
        yield sse("[DONE]")

    async def _image_completion(
        self, body: oa.ChatCompletionRequest, image, ident: str, created: int, context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """A chat that shows the model an image, answered by image description."""
        protovalidate.validate(image)
        check_image(image.image, image.mime_type)
        answer = (await self._unary(Rpc.DESCRIBE_IMAGE, [image], context))[0]
        message = {"role": "assistant", "content": answer.description, "refusal": None}
        usage = reply.usage_dict([answer.usage])
        if not body.stream:
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            yield json_body(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": answer.model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
            return
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": answer.model}
        yield sse({**head, "choices": [{"index": 0, "delta": message, "finish_reason": None, "logprobs": None}]})
        yield sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]})
        if body.stream_options and body.stream_options.include_usage:
            yield sse({**head, "choices": [], "usage": usage})
        yield sse("[DONE]")

    async def CreateCompletion(self, request, context):
        async for body in _answered(context, self._completion(request, context)):
            yield body

    async def _completion(self, request, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
        body = oa.parse(oa.CompletionRequest, request.body.data)
        prompts = body.to_protos()
        for proto in prompts:
            protovalidate.validate(proto)
        requests = [copy for proto in prompts for copy in _copies(proto, body.n)]
        # Choice i answers prompt i // n, as OpenAI orders them.
        echoed = [proto.prompt if body.echo else "" for proto in prompts for _ in range(body.n)]
        ident, created = reply.completion_id("cmpl"), reply.now()

        def choice(index: int, text: str, finish: str | None, logprobs: list, offset: int) -> dict[str, Any]:
            entries = reply.completion_logprobs(logprobs, offset) if body.logprobs is not None else None
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": entries}

        def completion(choices: list[dict[str, Any]], model: str) -> dict[str, Any]:
            return {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": choices}

        if not body.stream:
            replies = await self._unary(Rpc.GENERATE_TEXT, requests, context)
            choices = [
                choice(i, echoed[i] + r.text, reply.finish_reason(r.finish_reason), list(r.logprobs), len(echoed[i]))
                for i, r in enumerate(replies)
            ]
            usage = reply.usage_dict([r.usage for r in replies])
            yield json_body({**completion(choices, replies[0].model), "usage": usage})
            return
        offsets = [len(text) for text in echoed]
        usages = {}
        model = ""
        async for index, item in _merged(self._streams(Rpc.GENERATE_TEXT, requests, context)):
            model = item.model
            text = item.text
            if echoed[index]:
                text, echoed[index] = echoed[index] + text, ""
            finish = reply.finish_reason(item.finish_reason)
            if text or finish or item.logprobs:
                yield sse(completion([choice(index, text, finish, list(item.logprobs), offsets[index])], model))
                offsets[index] += sum(len(e.token) for e in item.logprobs)
            if finish:
                usages[index] = item.usage
        if body.stream_options and body.stream_options.include_usage:
            yield sse({**completion([], model), "usage": reply.usage_dict(list(usages.values()))})
        yield sse("[DONE]")

    async def CreateEmbedding(self, request, context):
        return await _one(context, self._embedding(request, context))

    async def _embedding(self, request, context) -> httpbody_pb2.HttpBody:
        body = oa.parse(oa.EmbeddingRequest, request.body.data)
        proto = body.to_proto()
        protovalidate.validate(proto)
        answer = (await failover.unary(self.core, Rpc.EMBED, proto, call_context(context), announcer(context))).reply
        width = len(answer.embeddings[0].values) if answer.embeddings else 0
        if body.dimensions is not None and body.dimensions != width:
            raise InvalidArgument(
                f"model {body.model!r} makes {width}-dimensional embeddings; dimensions={body.dimensions} "
                "cannot be honoured",
                reason="UNSUPPORTED_DIMENSIONS",
                model=body.model,
                dimensions=body.dimensions,
                param="dimensions",
            )
        data = [
            {
                "object": "embedding",
                "index": e.index,
                "embedding": reply.encode_embedding(e.values, body.encoding_format),
            }
            for e in answer.embeddings
        ]
        usage = {"prompt_tokens": answer.usage.input_tokens, "total_tokens": answer.usage.input_tokens}
        return json_body({"object": "list", "data": data, "model": answer.model, "usage": usage})

    async def CreateTranscription(self, request, context):
        async for body in _answered(context, self._transcription(request, context), in_band=False):
            yield body

    async def _transcription(self, request, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
        fields, upload = multipart_form.form_fields(multipart_form.parse(request.body.content_type, request.body.data))
        body = oa.parse_fields(oa.TranscriptionRequest, fields)
        proto = body.to_proto(upload.data, upload.content_type)
        protovalidate.validate(proto)
        call = call_context(context)
        if body.stream:
            pieces = failover.stream(self.core, Rpc.TRANSCRIBE, proto, call, announcer(context), in_band_errors=False)
            async for event in reply.transcription_events(pieces):
                yield sse(event)
            return
        answer = (await failover.unary(self.core, Rpc.TRANSCRIBE, proto, call, announcer(context))).reply
        granularities = body.timestamp_granularities or ()
        content_type, text = reply.transcription(
            answer, body.response_format, "word" in granularities, "segment" in granularities
        )
        yield httpbody_pb2.HttpBody(content_type=content_type, data=text.encode())

    async def CreateSpeech(self, request, context):
        async for body in _answered(context, self._speech(request, context), in_band=False):
            yield body

    async def _speech(self, request, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
        body = oa.parse(oa.SpeechRequest, request.body.data)
        proto = body.to_proto()
        protovalidate.validate(proto)
        call = call_context(context)
        chunks = failover.stream(self.core, Rpc.SYNTHESIZE, proto, call, announcer(context), in_band_errors=False)
        async for chunk in chunks:
            if chunk.audio:
                yield httpbody_pb2.HttpBody(content_type=chunk.mime_type, data=chunk.audio)

    async def ListModels(self, request, context):
        models = [reply.model_dict(m, self.created) for m in self.core.requestable()]
        return json_body({"object": "list", "data": models})

    async def GetModel(self, request, context):
        return await _one(context, self._model(request))

    async def _model(self, request) -> httpbody_pb2.HttpBody:
        if request.model not in self.core.requestable():
            raise NotFound(f"model {request.model!r} does not exist", reason="MODEL_NOT_FOUND", model=request.model)
        return json_body(reply.model_dict(request.model, self.created))


async def _one(context, answer: Awaitable[httpbody_pb2.HttpBody]) -> httpbody_pb2.HttpBody:
    """A unary reply, or the OpenAI error response for its failure."""
    try:
        return await answer
    except Exception as exc:  # noqa: BLE001 - every failure is answered in OpenAI's shape
        return await _error_reply(context, exc)
