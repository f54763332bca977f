"""LangChain's OpenAI integration (langchain-openai) against the mesh, as its docs use it."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from openai_conformance import (
    BASE_MODEL,
    EMBEDDING_MODEL,
    INSTRUCT_MODEL,
    TEXT_MODELS,
    City,
    cosine,
    offline_tiktoken,
    sdk_client,
)


class WeatherQuery(BaseModel):
    city: str = Field(max_length=24, description="The city, e.g. Paris")


@tool(args_schema=WeatherQuery)
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"


def chat(base_url: str, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=model, temperature=0, max_tokens=64, max_retries=0
    )


@pytest.mark.parametrize("model", [INSTRUCT_MODEL, BASE_MODEL])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_a_populated_object(base_url, model, method):
    city = (
        chat(base_url, model).with_structured_output(City, method=method).invoke("Which city is the Eiffel Tower in?")
    )
    assert isinstance(city, City) and city.city and city.country


def test_bind_tools_lets_an_instruct_model_choose_the_tool(base_url):
    reply = chat(base_url, INSTRUCT_MODEL).bind_tools([get_weather]).invoke("What is the weather in Paris right now?")
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and WeatherQuery.model_validate(call["args"]).city


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_bind_tools_with_a_named_tool_choice_calls_it(base_url, model):
    llm = chat(base_url, model).bind_tools([get_weather], tool_choice="get_weather")
    [call] = llm.invoke("What is the weather in Paris right now?").tool_calls
    assert call["name"] == "get_weather" and WeatherQuery.model_validate(call["args"]).city


def test_completions_llm_returns_text(base_url):
    # langchain's OpenAI LLM always sends `prompt` as a list (of one here).
    llm = OpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=BASE_MODEL, temperature=0, max_tokens=8, max_retries=0
    )
    assert llm.invoke("The capital of France is").strip()


def test_embeddings_with_default_token_ids_match_the_texts_vectors(base_url, tmp_path):
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors."]
    # Defaults as a user has them: tiktoken tokenizes (cl100k_base for a model name it does
    # not know) and the token ids go over the wire; only the BPE file comes from disk.
    with offline_tiktoken(tmp_path / "tiktoken"):
        embeddings = OpenAIEmbeddings(base_url=f"{base_url}/v1", api_key="unused", model=EMBEDDING_MODEL, max_retries=0)
        vectors = embeddings.embed_documents(texts)
    expected = sdk_client(base_url).embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    assert len(vectors) == 2
    assert all(cosine(v, e.embedding) > 0.999 for v, e in zip(vectors, expected.data, strict=True))
