"""The HTTP servers the provider adapters talk to in tests (the adapters themselves run
on support.services.provider_server, or in a mesh).

The hosted APIs cannot be reached from here. The OpenAI adapter talks to a real
OpenAI-compatible server where one exists (this mesh's own front door); for what that
server cannot produce on demand (401, 429 with Retry-After, 5xx, slow answers, image
input) and for Gemini, `StandIn` is a plain HTTP server (the standard library's) that
answers in the providers' documented wire formats — a contract test of the adapters'
requests, response handling and error mapping, not of the providers themselves.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from support.ports import free_port


@dataclass
class Reply:
    status: int = 200
    body: object = None  # JSON-serialisable, or a list of SSE events for a stream
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: bool = False
    chunk_delay: float = 0.0  # between a stream's events


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict


class StandIn:
    """Answers each request with the next scripted Reply, else with `default(request)`."""

    def __init__(self, default: Callable[[Seen], Reply]) -> None:
        self.default = default
        self.script: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Seen(
            handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, json.loads(raw or b"{}")
        )
        self.seen.append(request)
        reply = self.script.popleft() if self.script else self.default(request)
        time.sleep(reply.delay)
        try:
            if reply.stream:
                handler.send_response(reply.status)
                handler.send_header("content-type", "text/event-stream")
                handler.send_header("connection", "close")  # the stream ends when the connection does
                handler.end_headers()
                handler.close_connection = True
                for index, event in enumerate(reply.body):
                    if index:
                        time.sleep(reply.chunk_delay)
                    data = event if isinstance(event, str) else json.dumps(event)
                    handler.wfile.write(f"data: {data}\r\n\r\n".encode())
                    handler.wfile.flush()
                return
            payload = json.dumps(reply.body if reply.body is not None else {}).encode()
            handler.send_response(reply.status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(payload)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    @contextmanager
    def running(self) -> Iterator[StandIn]:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                stand_in.handle(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error as OpenAI's API sends it."""
    return Reply(status, {"error": {"message": message, "type": "error", "code": None}}, headers or {})


def openai_chat(text: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> Reply:
    return Reply(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "stand-in",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def gemini_error(status: int, google_status: str, message: str, retry_delay: str | None = None) -> Reply:
    """An error as Google's APIs send it (google.rpc.Status in JSON)."""
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}] if retry_delay else []
    return Reply(status, {"error": {"code": status, "message": message, "status": google_status, "details": details}})


SPEECH_RATE = 24000  # Gemini's TTS: 16-bit mono PCM at 24 kHz
SECONDS_PER_WORD = 0.25


def gemini_speech(words: list[str], model: str) -> Reply:
    """A TTS model's answer: a tone lasting a quarter second per word of the text, as
    inline PCM (audio/L16) the way Gemini sends speech."""
    samples = int(SPEECH_RATE * SECONDS_PER_WORD * len(words))
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(samples) / SPEECH_RATE)).astype("<i2")
    audio = {"mimeType": f"audio/L16;codec=pcm;rate={SPEECH_RATE}", "data": base64.b64encode(tone.tobytes()).decode()}
    candidate = {"content": {"role": "model", "parts": [{"inlineData": audio}]}, "finishReason": "STOP", "index": 0}
    usage = {"promptTokenCount": len(words), "candidatesTokenCount": samples // 1000, "totalTokenCount": len(words)}
    return Reply(200, {"candidates": [candidate], "modelVersion": model, "usageMetadata": usage})


def gemini_default(request: Seen) -> Reply:
    """Gemini's REST API as documented (ai.google.dev/api): generateContent,
    streamGenerateContent with alt=sse, batchEmbedContents. Answers are derived from the
    request so tests can check what the adapter sent."""
    model = request.path.split("/models/")[-1].split(":")[0]
    if ":batchEmbedContents" in request.path:
        vectors = [
            {"values": [float(len(r["content"]["parts"][0]["text"])), 1.0, 0.0]} for r in request.body["requests"]
        ]
        return Reply(200, {"embeddings": vectors})
    parts = [p for content in request.body.get("contents", []) for p in content.get("parts", [])]
    words = [w for p in parts if "text" in p for w in p["text"].split()]
    # Google's JSON accepts proto field names in camelCase or snake_case; the SDK may send either.
    inline = [p.get("inlineData") or p.get("inline_data") for p in parts if {"inlineData", "inline_data"} & set(p)]
    config = request.body.get("generationConfig", {})
    if "AUDIO" in (config.get("responseModalities") or config.get("response_modalities") or []):
        return gemini_speech(words, model)
    recordings = [i for i in inline if (i.get("mimeType") or i.get("mime_type") or "").startswith("audio/")]
    images = [i for i in inline if i not in recordings]
    if recordings:
        size = len(base64.urlsafe_b64decode(recordings[0]["data"]))  # google-genai's base64 is URL-safe
        words = ["a", "recording", "of", str(size), "bytes"]
    elif images:
        size = len(base64.b64decode(images[0]["data"]))
        words = ["an", "image", "of", str(size), "bytes", images[0].get("mimeType") or images[0].get("mime_type")]
    limit = request.body.get("generationConfig", {}).get("maxOutputTokens") or 64
    answer = words[:limit]
    finish = "MAX_TOKENS" if len(words) > limit else "STOP"
    usage = {
        "promptTokenCount": len(words),
        "candidatesTokenCount": len(answer),
        "totalTokenCount": len(words) + len(answer),
    }

    def chunk(text: str, last: bool) -> dict:
        candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = finish
        body = {"candidates": [candidate], "modelVersion": model}
        if last:
            body["usageMetadata"] = usage
        return body

    if ":streamGenerateContent" in request.path:
        pieces = [" ".join(answer[i : i + 2]) + " " for i in range(0, len(answer), 2)] or [""]
        return Reply(200, [chunk(p, i == len(pieces) - 1) for i, p in enumerate(pieces)], stream=True)
    return Reply(200, chunk(" ".join(answer), True))
