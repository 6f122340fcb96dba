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
