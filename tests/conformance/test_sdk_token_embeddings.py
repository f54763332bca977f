"""Embeddings of token ids (tiktoken's cl100k_base, as OpenAI's clients send them) equal
the embeddings of the texts, through the official Python SDK."""

from __future__ import annotations

import pytest
import tiktoken

from openai_conformance import EMBEDDING_MODEL, cosine, offline_tiktoken, sdk_client

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors."]


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


@pytest.fixture(scope="module")
def cl100k(tmp_path_factory):
    with offline_tiktoken(tmp_path_factory.mktemp("tiktoken")):
        yield tiktoken.get_encoding("cl100k_base")


def vectors(client, inputs):
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=inputs, encoding_format="float")
    return [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]


def test_one_list_of_token_ids_embeds_like_its_text(client, cl100k):
    [from_ids] = vectors(client, cl100k.encode(TEXTS[0]))
    [from_text] = vectors(client, TEXTS[0])
    assert cosine(from_ids, from_text) > 0.999


def test_lists_of_token_ids_embed_like_their_texts(client, cl100k):
    from_ids = vectors(client, [cl100k.encode(text) for text in TEXTS])
    from_texts = vectors(client, TEXTS)
    assert len(from_ids) == 2
    assert all(cosine(a, b) > 0.999 for a, b in zip(from_ids, from_texts, strict=True))
