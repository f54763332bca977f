"""One step's logits before a token is drawn: OpenAI's logit_bias and presence/frequency
penalties, and the log probabilities a caller asked for (decoding_step.py)."""

import math

import numpy as np

from services.backend.types import GenerationParams
from services.inference.models.decoding_step import DecodingStep


def step(**params) -> DecodingStep:
    return DecodingStep(GenerationParams(**params), None, token_text=lambda t: f"<{t}>")


def test_plain_decoding_is_left_alone():
    assert not step().active


def test_logit_bias_moves_the_tokens_it_names():
    scores = np.zeros(5, dtype=np.float32)
    step(logit_bias=((1, -100.0), (3, 5.0))).shape(scores)
    assert scores.tolist() == [0, -100, 0, 5, 0]


def test_penalties_count_the_tokens_generated_so_far():
    shaper = step(presence_penalty=1.0, frequency_penalty=0.5)
    for token in (2, 2, 4):
        shaper.shape(np.zeros(5, dtype=np.float32))
        shaper.chosen(token)
    scores = shaper.shape(np.zeros(5, dtype=np.float32))
    # token 2: present (1.0) + twice (2 x 0.5); token 4: present + once.
    assert scores.tolist() == [0, 0, -2.0, 0, -1.5]


def test_logprobs_are_the_models_own_distribution_with_the_top_alternatives():
    shaper = step(logprobs=2, logit_bias=((0, -100.0),))
    scores = np.log(np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32))
    shaper.shape(scores)
    entry = shaper.chosen(1)
    assert entry.token == "<1>" and math.isclose(entry.logprob, math.log(0.25), rel_tol=1e-5)
    # Before the bias: token 0 is still the most likely in what the model said.
    assert [t.token for t in entry.top] == ["<0>", "<1>"]
    assert math.isclose(entry.top[0].logprob, math.log(0.5), rel_tol=1e-5)
