"""`make bench`: throughput of the inference server under concurrency, measured side by side.

Through the front door (Envoy → router → Envoy → inference server, REST + SSE) and then
in-process (the inference core called directly, no gRPC, no Envoy), on the same machine
in one run, so the ratios and the mesh's own cost can be read off together:

- generation: aggregate generated tokens/s at 1, 4, 16 and 32 concurrent streams divided
  by the sequential batch-1 rate, with time-to-first-token p50/p99;
- embeddings: sentences/s at 64 concurrent callers divided by one-at-a-time (sent with a
  thin HTTP client, so the load generator does not starve the services of CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)
from raw_http import Connection  # noqa: E402  (from tests/, put on the path above)
from stats import percentile  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper named",
    "The history of the Roman Empire begins with",
    "Here is a detailed recipe for bread. First,",
    "The most important inventions of the twentieth century are",
]
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


@dataclass
class Run:
    tokens: int
    seconds: float
    ttfts: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def concurrently(n: int, one: Callable[[int], Awaitable[tuple[int, float]]]) -> Run:
    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return Run(sum(t for t, _ in results), time.perf_counter() - started, [f for _, f in results])


async def sequential(n: int, one: Callable[[int], Awaitable[tuple[int, float]]]) -> Run:
    started, tokens, ttfts = time.perf_counter(), 0, []
    for i in range(n):
        t, f = await one(i)
        tokens += t
        ttfts.append(f)
    return Run(tokens, time.perf_counter() - started, ttfts)


def report_generation(title: str, baseline: Run, runs: dict[int, Run]) -> None:
    print(f"\n{title}")
    print(
        f"  sequential batch-1: {baseline.rate:7.1f} tok/s   TTFT p50 {1000 * statistics.median(baseline.ttfts):6.0f} ms"
    )
    for n, run in runs.items():
        print(
            f"  {n:3d} concurrent:     {run.rate:7.1f} tok/s = {run.rate / baseline.rate:5.1f}x   "
            f"TTFT p50 {1000 * percentile(run.ttfts, 0.5):6.0f} ms  p99 {1000 * percentile(run.ttfts, 0.99):6.0f} ms"
        )


async def through_front_door(base_url: str, max_tokens: int, levels: list[int], embeds: int) -> dict:
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    headers = {"cache-control": "no-cache"}  # measure the backends, not the router's response cache
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits, headers=headers) as client:

        async def stream(i: int) -> tuple[int, float]:
            body = {"model": "gemma-3-270m", "prompt": PROMPTS[i % len(PROMPTS)], "config": {"max_tokens": max_tokens}}
            started, first, tokens = time.perf_counter(), None, 0
            async with client.stream("POST", "/v1/generate-text:stream", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["text"] and first is None:
                        first = time.perf_counter() - started
                    if event.get("usage"):
                        tokens = event["usage"]["output_tokens"]
            return tokens, first or 0.0

        host, port = base_url.removeprefix("http://").split(":")
        connections: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(64):
            connections.put_nowait(await Connection.open(host, int(port)))

        async def embed(i: int) -> tuple[int, float]:
            connection = await connections.get()
            started = time.perf_counter()
            status, body = await connection.post_json(
                "/v1/embed", {"model": "all-minilm-l6-v2", "inputs": [f"{SENTENCE} {i}"]}
            )
            connections.put_nowait(connection)
            assert status == 200, body
            return 1, time.perf_counter() - started

        await stream(0)  # warm the path
        return await measure("through the front door", stream, embed, levels, embeds)


async def measure(where: str, stream: Callable, embed: Callable, levels: list[int], embeds: int) -> dict:
    """The same measurements wherever the calls go: generation, then embeddings."""
    baseline = await sequential(3, stream)
    runs = {n: await concurrently(n, stream) for n in levels}
    report_generation(f"Generation {where}", baseline, runs)
    await sequential(20, embed)  # warm the batcher
    one = await sequential(embeds, embed)
    many = await concurrently_limited(embeds * 10, 64, embed)
    print_embeddings(f"Embeddings {where}, one sentence per request", one, many)
    return {"generation": (baseline, runs), "embeddings": (one, many)}


async def concurrently_limited(total: int, workers: int, one: Callable[[int], Awaitable[tuple[int, float]]]) -> Run:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    done, latencies = 0, []

    async def worker() -> None:
        nonlocal done
        while not queue.empty():
            n, latency = await one(queue.get_nowait())
            done += n
            latencies.append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return Run(done, time.perf_counter() - started, latencies)


def print_embeddings(title: str, one: Run, many: Run) -> None:
    print(f"\n{title}")
    print(f"  one at a time:   {one.rate:7.1f} sentences/s   latency p50 {1000 * statistics.median(one.ttfts):5.1f} ms")
    print(
        f"  64 concurrent:   {many.rate:7.1f} sentences/s = {many.rate / one.rate:5.1f}x   "
        f"latency p50 {1000 * percentile(many.ttfts, 0.5):5.1f} ms  p99 {1000 * percentile(many.ttfts, 0.99):5.1f} ms"
    )


async def in_process(max_tokens: int, levels: list[int], embeds: int, data_dir: Path) -> dict:
    from services.backend.types import GenerationParams
    from services.inference.app import InferenceApp
    from services.inference.settings import InferenceSettings
    from services.runtime.server import create_server

    settings = InferenceSettings(grpc_port=0, data_dir=data_dir)
    app = InferenceApp(settings)
    bound = await create_server(settings, app)
    await app.start(bound.health)
    core = app.core

    async def stream(i: int) -> tuple[int, float]:
        started, first, tokens = time.perf_counter(), None, 0
        sampling = GenerationParams(max_tokens=max_tokens)
        async for chunk in core.generate("gemma-3-270m", PROMPTS[i % len(PROMPTS)], sampling):
            if chunk.text and first is None:
                first = time.perf_counter() - started
            if chunk.usage:
                tokens = chunk.usage.output_tokens
        return tokens, first or 0.0

    async def embed(i: int) -> tuple[int, float]:
        started = time.perf_counter()
        await core.embed("all-minilm-l6-v2", [f"{SENTENCE} {i}"])
        return 1, time.perf_counter() - started

    try:
        return await measure("in-process (the inference core: no gRPC, no Envoy)", stream, embed, levels, embeds)
    finally:
        await app.close()


def memory_bandwidth() -> float:
    """Bytes/s this machine copies (read + write) through main memory: numpy, 512 MiB."""
    import numpy as np

    source = np.ones(512 * 2**20 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = max(best, 2 * source.nbytes / (time.perf_counter() - started))
    return best


def compare_runtimes(data_dir: Path, max_tokens: int) -> None:
    """Batch-1 decode of the same Gemma GGUF under transformers (dequantized) and llama.cpp
    (quantized, memory-mapped), next to the bound memory bandwidth puts on each: every
    decoded token reads all the weights once."""
    from services.backend.types import GenerationParams
    from services.inference.models.base import CancelToken
    from services.inference.models.builtin import BUILTIN_SPECS, GEMMA_GGUF_ID, GEMMA_ID, BuildOptions, build_model

    bandwidth = memory_bandwidth()
    threads = len(os.sched_getaffinity(0))
    options = BuildOptions(data_dir, "cpu", "auto", 8192, threads)
    print(f"\nRuntimes, batch-1 decode in-process (memory bandwidth measured: {bandwidth / 1e9:.1f} GB/s)")
    for model_id in (GEMMA_ID, GEMMA_GGUF_ID):
        model = build_model(BUILTIN_SPECS[model_id], options)
        model.load()
        try:
            params = GenerationParams(max_tokens=max_tokens)
            for _ in model.generate(PROMPTS[0], GenerationParams(max_tokens=4), CancelToken()):
                pass
            first, tokens = None, 0
            for chunk in model.generate(PROMPTS[0], params, CancelToken()):
                first = first or time.perf_counter()
                tokens = chunk.usage.output_tokens if chunk.usage else tokens
            decode = (tokens - 1) / (time.perf_counter() - first)
            weights = model.memory_bytes()
            bound = bandwidth / weights
            print(
                f"  {model_id:24s} {model.dtype:9s} weights {weights / 2**20:6.0f} MiB   "
                f"decode {decode:6.1f} tok/s   bandwidth bound {bound:6.1f} tok/s ({100 * decode / bound:3.0f}%)"
            )
        finally:
            model.stop()


def static_batches(data_dir: Path, max_tokens: int, levels: list[int]) -> None:
    """The alternative to continuous batching: one padded generate() per batch (requests
    can neither join nor leave mid-way). Same model, same dtype, EOS ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.inference.models.builtin import prepare_gemma, resolve_dtype

    path = prepare_gemma(data_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype("auto", "cpu")).eval()
    print("\nStatic padded batches in-process (one transformers generate() per batch, for comparison)")
    base = None
    with torch.inference_mode():
        for n in [1, *[n for n in levels if n > 1]]:
            batch = tokenizer([PROMPTS[i % len(PROMPTS)] for i in range(n)], return_tensors="pt", padding=True)
            started = time.perf_counter()
            model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            rate = n * max_tokens / (time.perf_counter() - started)
            base = base or rate
            print(f"  batch {n:3d}: {rate:7.1f} tok/s = {rate / base:5.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--embeds", type=int, default=200, help="one-at-a-time embedding requests")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from launcher.mesh import Mesh
    from support.meshes import mesh_settings

    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}); model gemma-3-270m, max_tokens={args.max_tokens}")
    settings = mesh_settings()
    with tempfile.TemporaryDirectory() as logs:
        mesh = Mesh(settings, log_dir=Path(logs))
        mesh.start()
        try:
            mesh.wait_ready()
            mesh_results = asyncio.run(
                through_front_door(f"http://127.0.0.1:{settings.front_door_port}", args.max_tokens, levels, args.embeds)
            )
        finally:
            mesh.stop()
    local = asyncio.run(in_process(args.max_tokens, levels, args.embeds, settings.data_dir))
    static_batches(settings.data_dir, args.max_tokens, levels)
    compare_runtimes(settings.data_dir, args.max_tokens)
    print("\nThe mesh's own cost (front door rate / in-process rate)")
    for n in levels:
        mesh_rate, local_rate = mesh_results["generation"][1][n].rate, local["generation"][1][n].rate
        print(f"  generation at {n:3d} concurrent: {mesh_rate / local_rate:5.2f}")
    one, many = mesh_results["embeddings"][1].rate, local["embeddings"][1].rate
    print(f"  embeddings at  64 concurrent: {one / many:5.2f}")


if __name__ == "__main__":
    main()
