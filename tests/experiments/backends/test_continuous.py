"""Continuous batching: slots refilled and packed, penalty windows, and stories that do not depend on either."""

from __future__ import annotations

import pytest
import torch

from experiments.backends.base import StoryRequest
from experiments.backends.continuous import _pack, _windows, decode_continuously
from experiments.backends.hf_samplers import DryTables, SamplerChain, apply_penalties, choose_tokens, needs_history
from experiments.config import SamplingConfig

from .test_static_decoder import decoder_for, tiny_model


def test_pack_moves_stories_down_only_while_that_saves_a_tile():
    moves = []

    def move(source, target):
        moves.append((source, target))
        slots[target], slots[source] = slots[source], None

    slots = ["a", None, None, "b", None, "c"]  # 3 stories in tiles of 2: they fit in 2 tiles
    _pack(slots, 2, move)
    assert moves == [(5, 1)] and slots[:4] == ["a", "c", None, "b"]
    moves.clear()
    _pack(slots, 2, move)  # packed already
    assert moves == []


def test_windows_are_each_rows_last_tokens_left_padded():
    history = torch.tensor([[1, 2, 3, 4, -1], [7, -1, -1, -1, -1], [5, 6, -1, -1, -1]])
    assert _windows(history, [4, 1, 2], 3).tolist() == [[2, 3, 4], [-1, -1, 7], [-1, 5, 6]]
    assert _windows(history, [4, 1, 2], None).tolist() == [[1, 2, 3, 4], [-1, -1, -1, 7], [-1, -1, 5, 6]]
    assert _windows(history, [0, 0, 0], 3).shape == (3, 0)


def test_padding_in_a_penalty_window_counts_for_nothing():
    scores = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    padded = apply_penalties(scores, torch.tensor([[-1, -1, 0, 1, 1]]), 1.5, 0.5, 0.25)
    assert torch.equal(padded, apply_penalties(scores, torch.tensor([[0, 1, 1]]), 1.5, 0.5, 0.25))


def test_history_is_kept_only_when_penalties_or_dry_run():
    assert not needs_history(SamplingConfig())
    assert not needs_history(SamplingConfig(repetition_penalty=1.0, presence_penalty=0.0))
    assert needs_history(SamplingConfig(repetition_penalty=1.2))
    assert not needs_history(SamplingConfig(repetition_penalty=1.2, repeat_last_n=0))
    assert needs_history(SamplingConfig(dry_multiplier=0.8))
    assert not needs_history(SamplingConfig(dry_multiplier=0.8, dry_penalty_last_n=0))


def decode(sampling: SamplingConfig, batch_size: int, stories: int = 12, order=None):
    model = tiny_model()
    decoder = decoder_for(model, slots=batch_size, max_len=128)
    # DRY with token 7 as the one sequence breaker (the tiny model has no tokenizer)
    breakers = DryTables.build({7: [()]}, model.config.vocab_size) if sampling.dry_multiplier else None
    chain = SamplerChain(sampling, model.config.vocab_size, breakers)
    requests = [StoryRequest(f"s{index}", index, 1000 + index, "p") for index in range(stories)]
    if order:
        requests = [requests[index] for index in order]
    stepped = []
    finished = decode_continuously(decoder, requests, sampling, [3, 4, 5], batch_size, {2},
                                   lambda *rows: choose_tokens(chain, *rows),
                                   on_tokens=stepped.append)
    return {done.story.request.story_id: (done.story.tokens, done.story.logprobs, done.ended) for done in finished}, stepped


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=1.0, top_k=20, max_tokens=40),
    SamplingConfig(temperature=1.3, top_p=0.9, min_p=0.02, repetition_penalty=1.3, presence_penalty=0.4,
                   frequency_penalty=0.2, repeat_last_n=8, max_tokens=40),
    SamplingConfig(temperature=0, max_tokens=40),
    SamplingConfig(temperature=1.5, xtc_probability=0.5, xtc_threshold=0.05, top_n_sigma=2.0, max_tokens=40),
    SamplingConfig(temperature=1.2, dry_multiplier=0.8, dry_allowed_length=1, dynatemp_range=0.5,
                   sampler_order=["temperature", "dry", "top_k"], top_k=30, max_tokens=40),
], ids=["top-k", "penalties", "greedy", "xtc-top-n-sigma", "dry-dynatemp-order"])
def test_a_story_does_not_depend_on_batch_size_or_on_which_stories_ran_before(sampling):
    one_at_a_time, _ = decode(sampling, batch_size=1)
    together, stepped = decode(sampling, batch_size=5)
    reversed_order, _ = decode(sampling, batch_size=5, order=list(reversed(range(12))))
    assert one_at_a_time == together == reversed_order
    assert sum(stepped) == sum(len(tokens) for tokens, _, _ in together.values())
    for tokens, logprobs, ended in together.values():
        assert len(tokens) == len(logprobs) and (ended or len(tokens) == 40)
        assert ended == (tokens[-1] == 2)


def test_every_request_comes_back_once():
    stories, _ = decode(SamplingConfig(temperature=1.0, max_tokens=5), batch_size=4, stories=11)
    assert sorted(stories) == sorted(f"s{index}" for index in range(11))
