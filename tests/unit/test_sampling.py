"""The batch's sampler draws tokens with exactly the probabilities it is given."""

import torch

from services.inference.models.continuous_batching import inverse_cdf_sample


def test_inverse_cdf_sampling_matches_the_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.2, 0.0, 0.7], [0.0, 0.0, 1.0, 0.0]]).repeat(50_000, 1)
    drawn = inverse_cdf_sample(probs).view(50_000, 2)
    first = torch.bincount(drawn[:, 0], minlength=4).float() / 50_000
    assert torch.allclose(first, torch.tensor([0.1, 0.2, 0.0, 0.7]), atol=0.01)
    assert (drawn[:, 1] == 2).all()  # a one-hot row (greedy) always gives its token


def test_a_token_with_zero_probability_is_never_drawn():
    probs = torch.zeros(10_000, 1000)
    probs[:, 999] = 0.5
    probs[:, 0] = 0.5
    drawn = inverse_cdf_sample(probs)
    assert set(drawn.unique().tolist()) <= {0, 999}
