"""Log probabilities and the legacy completions endpoint's batch, logprobs and echo
options, through the official Python SDK."""

from __future__ import annotations

from itertools import pairwise

import pytest

from openai_conformance import BASE_MODEL, TEXT_MODELS, sdk_client

PROMPTS = ["The capital of France is", "The capital of Italy is"]


@pytest.fixture(scope="module")
def client(base_url):
    return sdk_client(base_url)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_chat_logprobs_cover_every_generated_token(client, model):
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        max_tokens=12,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(max(top.logprob for top in entry.top_logprobs), abs=1e-4)  # greedy


def test_completion_prompt_list_completes_each_prompt_in_its_own_choice(client):
    batch = client.completions.create(model=BASE_MODEL, prompt=PROMPTS, temperature=0, max_tokens=6)
    assert sorted(c.index for c in batch.choices) == [0, 1]
    by_index = {c.index: c.text for c in batch.choices}
    for index, prompt in enumerate(PROMPTS):
        alone = client.completions.create(model=BASE_MODEL, prompt=prompt, temperature=0, max_tokens=6)
        assert by_index[index] == alone.choices[0].text


def test_completion_logprobs_have_the_legacy_shape(client):
    reply = client.completions.create(model=BASE_MODEL, prompt=PROMPTS[0], logprobs=2, temperature=0, max_tokens=6)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert (
        len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset)
    )
    assert len(logprobs.tokens) == reply.usage.completion_tokens and "".join(logprobs.tokens) == choice.text
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert logprob <= 0 and len(top) == 2 and top[token] == pytest.approx(logprob, abs=1e-4)
    offsets = logprobs.text_offset
    assert [b - a for a, b in pairwise(offsets)] == [len(t) for t in logprobs.tokens[:-1]]


def test_completion_echo_returns_the_prompt_before_the_completion(client):
    reply = client.completions.create(model=BASE_MODEL, prompt=PROMPTS[0], echo=True, temperature=0, max_tokens=6)
    assert reply.choices[0].text.startswith(PROMPTS[0]) and len(reply.choices[0].text) > len(PROMPTS[0])
