"""OpenAI response shapes (plain dicts) built from the mesh's typed replies: chat
completions and their stream chunks (tool calls, log probabilities), text completions,
embeddings, transcriptions, models."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_types_pb2 as types
from infermesh.router.v1 import router_messages_pb2 as pb

FINISH = {
    types.FINISH_REASON_STOP: "stop",
    types.FINISH_REASON_LENGTH: "length",
    types.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def finish_reason(reason: int) -> str | None:
    return FINISH.get(reason)


def usage_dict(usages: list[types.Usage]) -> dict[str, int]:
    """Token usage, summed over the calls one answer took (one per choice)."""
    prompt = sum(u.input_tokens for u in usages)
    completion = sum(u.output_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _top(entry: options.TopLogprob | options.TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}


def chat_logprobs(entries: list[options.TokenLogprob]) -> dict[str, Any]:
    content = [{**_top(e), "top_logprobs": [_top(t) for t in e.top_logprobs]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[options.TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions API's shape: parallel lists, and each token's character
    offset in the choice's text (`offset`: where the first one starts)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        "text_offset": offsets,
    }


def tool_calls(calls: list[options.ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in sorted(calls, key=lambda c: c.index)
    ]


def chat_message(reply: pb.ChatResponse) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.message.content if reply.message.content or not reply.message.tool_calls else None,
        "refusal": None,
    }
    if reply.message.tool_calls:
        message["tool_calls"] = tool_calls(list(reply.message.tool_calls))
    return message


def tool_call_deltas(calls: list[options.ToolCall]) -> list[dict[str, Any]]:
    """Stream pieces of tool calls in OpenAI's chunk shape: a call's first piece has its
    id, type and name; later pieces only the index and more arguments."""
    deltas = []
    for call in calls:
        function: dict[str, Any] = {"arguments": call.arguments}
        delta: dict[str, Any] = {"index": call.index, "function": function}
        if call.id:
            delta.update(id=call.id, type="function")
            function["name"] = call.name
        deltas.append(delta)
    return deltas


def encode_embedding(values: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    return list(values)


def model_dict(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "infermesh"}


def error_event(code: str, message: str) -> dict[str, Any]:
    """The in-band error a stream sends when it fails after it has started."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


async def transcription_events(pieces: AsyncIterator[pb.TranscribeResponse]) -> AsyncIterator[dict[str, Any]]:
    """A streamed transcript as OpenAI's events: `transcript.text.delta` for each segment
    as it is transcribed, then `transcript.text.done` with the whole text and the usage."""
    texts = []
    async for piece in pieces:
        if piece.text:
            texts.append(piece.text)
            yield {"type": "transcript.text.delta", "delta": piece.text}
        if piece.HasField("usage"):
            tokens = piece.usage.output_tokens
            usage = {"type": "tokens", "input_tokens": 0, "output_tokens": tokens, "total_tokens": tokens}
            yield {"type": "transcript.text.done", "text": "".join(texts).strip(), "usage": usage}


def transcription(answer: pb.TranscribeResponse, response_format: str, words: bool, segments: bool) -> tuple[str, str]:
    """A transcript in the response format asked for: (content type, body). OpenAI's
    whisper-1 shapes: `json` the text (and the audio's length as usage), `verbose_json`
    the language, duration and timed segments (and words, when asked), `text` plain,
    `srt` and `vtt` subtitles."""
    usage = {"type": "duration", "seconds": math.ceil(answer.duration_seconds)}
    if response_format == "text":
        return "text/plain; charset=utf-8", answer.text + "\n"
    if response_format in ("srt", "vtt"):
        return "text/plain; charset=utf-8", _subtitles(list(answer.segments), response_format)
    if response_format == "json":
        return "application/json", json.dumps({"text": answer.text, "usage": usage})
    verbose: dict[str, Any] = {
        "task": "transcribe",
        "language": answer.language,
        "duration": answer.duration_seconds,
        "text": answer.text,
    }
    if segments or not words:
        verbose["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in answer.segments
        ]
    if words:
        verbose["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end} for s in answer.segments for w in s.words
        ]
    verbose["usage"] = usage
    return "application/json", json.dumps(verbose)


def _subtitles(segments: list, kind: str) -> str:
    separator = "," if kind == "srt" else "."

    def stamp(seconds: float) -> str:
        millis = round(seconds * 1000)
        hours, millis = divmod(millis, 3_600_000)
        minutes, millis = divmod(millis, 60_000)
        return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"

    cues = [f"{stamp(s.start)} --> {stamp(s.end)}\n{s.text.strip()}\n" for s in segments]
    if kind == "vtt":
        return "WEBVTT\n\n" + "\n".join(cues)
    return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
