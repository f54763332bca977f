"""Server-sent events as the front door writes a stream for REST clients (`data: {json}`
per message, the transcoder's and the OpenAI surface's alike)."""

from __future__ import annotations

import json

import httpx


def sse_events(reply: httpx.Response) -> list[dict]:
    """The JSON of each `data:` event of a stream (`[DONE]` left out)."""
    return [
        json.loads(line[5:]) for line in reply.iter_lines() if line.startswith("data:") and line[5:].strip() != "[DONE]"
    ]
