"""`make bench`: what constrained decoding costs, and whether it always holds.

For each local runtime (transformers and llama.cpp on Gemma 3 270M, llama.cpp on
Qwen2.5-Coder-0.5B-Instruct when prepared), in this process on the model objects the
inference server uses, interleaved round by round so the machine's load hits both alike:

- throughput: generated tokens/s decoding freely vs under a strict JSON Schema and
  under JSON-object mode (the same prompt, the free run capped at the constrained run's
  length), and the added time per token;
- validity: N strict-schema generations with sampling (temperature 1, a new seed each):
  how many parse and validate (the goal: all of them);
- under concurrency, through the inference core: free requests on transformers share
  continuous-batching passes, constrained ones run one at a time (llama.cpp runs every
  request alone here), so the aggregate rates show what batching does for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402  (bench/ is this script's own folder)

from services.backend.types import GenerationParams  # noqa: E402
from services.inference.models.base import CancelToken  # noqa: E402
from services.inference.models.builtin import BUILTIN_SPECS, BuildOptions, build_model  # noqa: E402
from services.inference.models.grammar import json_object_grammar, json_schema_grammar  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "genre": {"type": "string", "enum": ["drama", "comedy", "thriller", "documentary"]},
        "rating": {"type": "number", "minimum": 0, "maximum": 10},
        "cast": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 1, "maxItems": 3},
        "awards": {
            "type": "object",
            "properties": {"won": {"type": "integer", "minimum": 0}, "nominated": {"type": "boolean"}},
            "required": ["won", "nominated"],
            "additionalProperties": False,
        },
    },
    "required": ["title", "year", "genre", "rating", "cast", "awards"],
    "additionalProperties": False,
}
PROMPT = "Here is a film, described as a JSON object with its title, year, genre, rating, cast and awards:\n"
MODELS = ["gemma-3-270m", "gemma-3-270m-llamacpp", "qwen2.5-coder-0.5b-instruct"]


def generate(model, params: GenerationParams) -> tuple[str, int, float]:
    started = time.perf_counter()
    chunks = list(model.generate(PROMPT, params, CancelToken()))
    seconds = time.perf_counter() - started
    return "".join(c.text for c in chunks), chunks[-1].usage.output_tokens, seconds


def throughput(model, rounds: int) -> None:
    schema, anything = json_schema_grammar(SCHEMA), json_object_grammar()
    totals = {"free": [0, 0.0], "json_schema": [0, 0.0], "json_object": [0, 0.0]}
    for _ in range(rounds):
        _, tokens, seconds = generate(model, GenerationParams(max_tokens=120, grammar=schema))
        totals["json_schema"][0] += tokens
        totals["json_schema"][1] += seconds
        _, object_tokens, object_seconds = generate(model, GenerationParams(max_tokens=tokens, grammar=anything))
        totals["json_object"][0] += object_tokens
        totals["json_object"][1] += object_seconds
        # Free decoding on the same one-request loop, as many tokens as the schema took.
        _, free_tokens, free_seconds = generate(model, GenerationParams(max_tokens=tokens))
        totals["free"][0] += free_tokens
        totals["free"][1] += free_seconds
    free = totals["free"][0] / totals["free"][1]
    print(f"  free decoding:     {free:6.1f} tok/s")
    for name in ("json_schema", "json_object"):
        rate = totals[name][0] / totals[name][1]
        added = (1 / rate - 1 / free) * 1000
        print(f"  {name + ':':18} {rate:6.1f} tok/s = {rate / free:5.1%} of free ({added:+.2f} ms per token)")


def validity(model, count: int) -> None:
    grammar = json_schema_grammar(SCHEMA)
    valid, tokens, started = 0, 0, time.perf_counter()
    for seed in range(count):
        params = GenerationParams(max_tokens=160, temperature=1.0, seed=seed, grammar=grammar)
        text, used, _ = generate(model, params)
        tokens += used
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError) as exc:
            print(f"  invalid ({used} tokens): {text[:120]!r}: {exc}")
    seconds = time.perf_counter() - started
    print(
        f"  strict schema, sampled: {valid}/{count} parse and validate ({tokens / count:.0f} tokens each, {seconds:.0f} s)"
    )


async def concurrent(model_ids: list[str], streams: int, data_dir: Path) -> None:
    """Aggregate tok/s of `streams` concurrent requests through the inference core (as the
    server runs them: free transformers requests share continuous-batching passes;
    constrained ones, like seeded or penalised ones, take the one-request loop)."""
    from services.backend.types import ResponseFormat
    from services.inference.app import InferenceApp
    from services.inference.settings import InferenceSettings
    from services.runtime.server import create_server

    settings = InferenceSettings(grpc_port=0, data_dir=data_dir, models=model_ids, available_models=[])
    app = InferenceApp(settings)
    bound = await create_server(settings, app)
    await app.start(bound.health)
    answer = ResponseFormat("json_schema", SCHEMA)
    print(f"\n{streams} concurrent requests through the inference core (aggregate tok/s):")
    try:
        for model_id in model_ids:
            rates = {}
            for name, params in (
                ("free", GenerationParams(max_tokens=60)),
                ("json_schema", GenerationParams(max_tokens=120, response_format=answer)),
            ):

                async def one(params=params, model_id=model_id) -> int:
                    tokens = 0
                    async for chunk in app.core.generate(model_id, PROMPT, params):
                        tokens = chunk.usage.output_tokens if chunk.usage else tokens
                    return tokens

                started = time.perf_counter()
                counts = await asyncio.gather(*(one() for _ in range(streams)))
                rates[name] = sum(counts) / (time.perf_counter() - started)
            ratio = rates["json_schema"] / rates["free"]
            print(
                f"  {model_id}: free {rates['free']:6.1f}  json_schema {rates['json_schema']:6.1f}  "
                f"= {ratio:5.1%} of free"
            )
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds per runtime")
    parser.add_argument("--generations", type=int, default=200, help="sampled strict-schema generations per runtime")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--streams", type=int, default=8, help="concurrent requests for the batched comparison")
    args = parser.parse_args()
    options = BuildOptions(
        data_dir=Path(os.environ.get("DATA_DIR", ROOT / ".data")),
        device=os.environ.get("DEVICE", "cpu"),
        dtype="auto",
        max_context=2048,
        threads=os.cpu_count() or 1,
    )
    print(f"Constrained decoding (llguidance) on {cpu_name()}, {os.cpu_count()} cores")
    for model_id in args.models:
        if model_id not in BUILTIN_SPECS:
            print(f"{model_id}: not a built-in model here; skipped")
            continue
        model = build_model(BUILTIN_SPECS[model_id], options)
        model.load()
        model.warmup()
        generate(model, GenerationParams(max_tokens=4, grammar=json_object_grammar()))  # builds its tokenizer
        print(f"{model_id} ({BUILTIN_SPECS[model_id].runtime}, {model.dtype}):")
        throughput(model, args.rounds)
        if args.generations:
            validity(model, args.generations)
        model.stop()
    if args.streams:
        present = [m for m in args.models if m in BUILTIN_SPECS]
        asyncio.run(concurrent(present, args.streams, options.data_dir))


if __name__ == "__main__":
    main()
