"""The hand-written penalties of the hf backend, on literal inputs."""

import torch

from experiments.backends.hf import apply_penalties


def test_repetition_presence_and_frequency_penalties():
    scores = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    window = torch.tensor([[0, 1, 1]])  # token 0 once, token 1 twice
    repeated = apply_penalties(scores, window, 2.0, None, None)
    assert repeated.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    additive = apply_penalties(scores, window, None, 0.5, 0.25)
    # presence 0.5 once per seen token; frequency 0.25 per occurrence
    assert additive.tolist() == [[2.0 - 0.5 - 0.25, -2.0 - 0.5 - 0.5, 1.0, 0.5]]


def test_no_penalty_changes_nothing():
    scores = torch.randn(2, 10)
    assert torch.equal(apply_penalties(scores, torch.tensor([[1], [2]]), None, None, None), scores)


def test_inverse_cdf_sampling_picks_by_cumulative_probability():
    from experiments.backends.hf import sample_by_inverse_cdf

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25]])
    assert sample_by_inverse_cdf(probs, torch.tensor([0.0, 0.0], dtype=torch.float64)).tolist() == [1, 0]
    assert sample_by_inverse_cdf(probs, torch.tensor([0.5, 0.6], dtype=torch.float64)).tolist() == [3, 2]
    assert sample_by_inverse_cdf(probs, torch.tensor([0.999, 0.999], dtype=torch.float64)).tolist() == [3, 3]


def test_inverse_cdf_sampling_matches_the_distribution():
    from experiments.backends.hf import sample_by_inverse_cdf

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(20000, 1)
    draws = sample_by_inverse_cdf(probs, torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    frequencies = torch.bincount(draws, minlength=4).double() / 20000
    assert torch.allclose(frequencies, torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64), atol=0.015)
