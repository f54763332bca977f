"""`make bench`: batch jobs beside interactive traffic, on a mesh started as `make run`
starts it (authorization off).

- Interactive latency: short chats sent one at a time through the front door, alone and
  then while a batch of chats runs on the same model: what a running batch costs an
  interactive caller (the batch keeps at most BATCH_CONCURRENCY requests in flight).
- Batch throughput: the batch's requests per second (from created to completed, files
  written), against the same requests sent by a client through the front door with as
  many in flight: what running them as a job costs.

Every prompt is new (the router's response cache would answer a repeat at once).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)
from stats import percentile  # noqa: E402

MODEL = "gemma-3-270m"
DONE = ("completed", "failed", "cancelled", "expired")
_prompts = itertools.count()


def chat(max_tokens: int) -> dict:
    question = f"Write one sentence about the number {next(_prompts)}."
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}


def interactive(client: openai.OpenAI, calls: int, max_tokens: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        client.chat.completions.create(**chat(max_tokens))
        seconds.append(time.perf_counter() - started)
    return seconds


def run_batch(client: openai.OpenAI, requests: int, max_tokens: int) -> str:
    rows = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat(max_tokens)}
        for i in range(requests)
    ]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    upload = client.files.create(file=("bench.jsonl", io.BytesIO(content)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id


async def as_client(base_url: str, requests: int, concurrency: int, max_tokens: int) -> float:
    """The same kind of requests sent by a client, `concurrency` at a time: requests/s."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    bodies = [chat(max_tokens) for _ in range(requests)]
    started = time.perf_counter()

    async def worker() -> None:
        while bodies:
            await client.chat.completions.create(**bodies.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return requests / (time.perf_counter() - started)


def describe(label: str, seconds: list[float]) -> str:
    return f"{label}: p50 {percentile(seconds, 0.5) * 1000:6.0f} ms, p99 {percentile(seconds, 0.99) * 1000:6.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=120, help="chats in the batch")
    parser.add_argument("--calls", type=int, default=20, help="interactive chats alone")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from services.jobs.settings import JobsSettings
    from support.meshes import mesh_running, mesh_settings

    concurrency = JobsSettings.model_fields["batch_concurrency"].default
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}); the mesh as `make run` starts it, authorization off")
    settings = mesh_settings(auth=False)
    with tempfile.TemporaryDirectory() as logs, mesh_running(settings, Path(logs)):
        base_url = f"http://127.0.0.1:{settings.front_door_port}/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
        interactive(client, 3, args.max_tokens)  # warm-up
        alone = interactive(client, args.calls, args.max_tokens)
        # The batch with nothing else running, then the same requests from a client.
        started = time.perf_counter()
        batch_id = run_batch(client, args.requests, args.max_tokens)
        while client.batches.retrieve(batch_id).status not in DONE:
            time.sleep(0.1)
        batch_rate = args.requests / (time.perf_counter() - started)
        client_rate = asyncio.run(as_client(base_url, args.requests, concurrency, args.max_tokens))
        # A batch again, with interactive calls beside it.
        batch_id = run_batch(client, args.requests, args.max_tokens)
        during: list[float] = []
        while (batch := client.batches.retrieve(batch_id)).status not in DONE:
            during += interactive(client, 1, args.max_tokens)
        assert batch.status == "completed" and batch.request_counts.completed == args.requests, batch
    print(f"\ninteractive chats ({MODEL}, {args.max_tokens} tokens), one at a time through the front door:")
    print("  " + describe(f"alone ({len(alone)} calls)          ", alone))
    print("  " + describe(f"beside a batch ({len(during)} calls)", during))
    print(f"  a running batch slows an interactive call {percentile(during, 0.5) / percentile(alone, 0.5):.2f}× at p50")
    print(f"\n{args.requests} chats, {concurrency} in flight, nothing else running:")
    print(f"  as a batch (upload, create, poll until its files are written): {batch_rate:5.2f} requests/s")
    print(f"  from a client through the front door:                          {client_rate:5.2f} requests/s")
    print(f"  the batch runs at {batch_rate / client_rate:.0%} of the client's rate")


if __name__ == "__main__":
    main()
