"""The hf backend's samplers on literal inputs, each against what llama.cpp's definition gives by hand."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.backends.hf_samplers import (ChainState, DryTables, SamplerChain, choose_tokens, draw_uniforms,
                                              dry_breaker_table, dry_penalties, temperature, top_k, top_n_sigma,
                                              xtc)
from experiments import samplers
from experiments.config import ConfigError, SamplingConfig


def state(*rows):
    scores = torch.tensor(rows, dtype=torch.float32)
    return ChainState(scores, finite=bool(torch.isfinite(scores).all()))


def kept(chain_state):
    return torch.isfinite(chain_state.scores).tolist()


# --- XTC --------------------------------------------------------------------------------------------

def test_xtc_removes_every_choice_above_the_threshold_but_the_least_likely():
    # probabilities 0.5, 0.3, 0.15, 0.05: three are >= 0.1, so the two likeliest go
    logits = [math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]
    after = xtc(state(logits), samplers.Xtc(probability=1.0, threshold=0.1), torch.tensor([0.3]))
    assert kept(after) == [[False, False, True, True]]
    assert after.present.tolist() == [[False, False, True, True]]  # truncated: out of the array


def test_xtc_does_nothing_with_fewer_than_two_candidates_above_the_threshold():
    logits = [math.log(0.8), math.log(0.09), math.log(0.06), math.log(0.05)]
    after = xtc(state(logits), samplers.Xtc(probability=1.0, threshold=0.1), torch.tensor([0.0]))
    assert kept(after) == [[True, True, True, True]]


def test_xtc_runs_only_when_the_rows_coin_says_so():
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)]
    rule = samplers.Xtc(probability=0.5, threshold=0.1)
    cut = xtc(state(logits, logits), rule, torch.tensor([0.5, 0.51]))  # <= probability: cut
    assert kept(cut) == [[False, False, True], [True, True, True]]


# --- top-n-sigma ------------------------------------------------------------------------------------

def test_top_n_sigma_keeps_logits_within_n_standard_deviations_of_the_maximum():
    # mean 2.5, population std sqrt(1.25) = 1.118; max 4 - 1 * 1.118 = 2.882: keeps 4 and 3
    after = top_n_sigma(state([1.0, 2.0, 3.0, 4.0]), 1.0)
    assert kept(after) == [[False, False, True, True]]
    assert after.present.all()  # masked, not truncated, as in llama.cpp
    assert kept(top_n_sigma(state([1.0, 2.0, 3.0, 4.0]), 3.0)) == [[True, True, True, True]]


def test_top_n_sigma_keeps_everything_when_all_logits_are_equal():
    assert kept(top_n_sigma(state([0.7, 0.7, 0.7]), 0.5)) == [[True, True, True]]


def test_top_n_sigma_ignores_tokens_already_masked():
    # -inf is left out of mean and std: over 3, 4 the std is 0.5 and the threshold 4 - 0.5
    after = top_n_sigma(state([-math.inf, 3.0, 4.0]), 1.0)
    assert kept(after) == [[False, False, True]]


# --- dynamic temperature ---------------------------------------------------------------------------

def test_dynamic_temperature_scales_with_normalised_entropy():
    uniform = state([1.0, 1.0, 1.0, 1.0])  # normalised entropy 1: the top of the range
    assert torch.allclose(temperature(uniform, 1.0, samplers.Dynatemp(0.5, 1.0)).scores,
                          torch.full((1, 4), 1.0 / 1.5))
    peaked = [10.0, 0.0, 0.0, 0.0]
    probs = torch.softmax(torch.tensor(peaked), dim=0)
    entropy = float(-(probs * probs.log()).sum())
    expected = 0.5 + 1.0 * (entropy / math.log(4)) ** 2.0
    after = temperature(state(peaked), 1.0, samplers.Dynatemp(0.5, 2.0))
    assert torch.allclose(after.scores, torch.tensor([peaked]) / expected, atol=1e-6)


def test_dynamic_temperature_counts_masked_candidates_still_in_the_array():
    # top-n-sigma masked two of four: llama.cpp's maximum entropy is still log(4)
    masked = top_n_sigma(state([5.0, 5.0, 0.0, 0.0]), 0.5)
    after = temperature(masked, 1.0, samplers.Dynatemp(1.0, 1.0))
    dynamic = 0.0 + 2.0 * (math.log(2) / math.log(4))
    assert torch.allclose(after.scores[0, :2], torch.tensor([5.0, 5.0]) / dynamic)


def test_plain_temperature_divides_and_greedy_keeps_the_maximum():
    assert torch.equal(temperature(state([2.0, 1.0]), 0.5, None).scores, torch.tensor([[4.0, 2.0]]))


# --- top-k --------------------------------------------------------------------------------------------

def test_top_k_picks_among_the_array_only():
    removed = state([3.0, 2.0, 1.0, 0.0]).remove(torch.tensor([[False, True, True, False]]))
    after = top_k(removed, 3)  # two remain in the array: k is cut to two, as llama.cpp's min(k, size)
    assert int(after.present.sum()) == 2 and sorted(after.candidates[0][after.present[0]].tolist()) == [0, 3]


# --- DRY ---------------------------------------------------------------------------------------------

def dry_rule(**overrides):
    values = dict(multiplier=0.8, base=1.75, allowed_length=2, penalty_last_n=-1, sequence_breakers=())
    values.update(overrides)
    return samplers.Dry(**values)


NO_BREAKERS = DryTables(torch.zeros(10, dtype=torch.bool), ())


def test_dry_penalises_the_token_that_would_extend_a_repeated_sequence():
    # a b c d a b c: the text "a b c" repeats; d followed it, so d would make it 4 long
    history = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])
    penalty = dry_penalties(history, dry_rule(), NO_BREAKERS, 10)
    expected = torch.zeros(1, 10)
    expected[0, 4] = 0.8 * 1.75 ** (3 - 2)
    assert torch.allclose(penalty, expected)


def test_dry_allows_repeats_up_to_the_allowed_length():
    history = torch.tensor([[1, 2, 4, 1, 2]])  # "1 2" repeats: length 2 = allowed, exponent 0
    penalty = dry_penalties(history, dry_rule(), NO_BREAKERS, 10)
    assert penalty[0, 4] == pytest.approx(0.8) and int((penalty > 0).sum()) == 1
    assert not dry_penalties(torch.tensor([[1, 4, 1]]), dry_rule(), NO_BREAKERS, 10).any()


def test_dry_does_not_look_across_a_sequence_breaker():
    single = torch.zeros(10, dtype=torch.bool)
    single[9] = True  # token 9 is a breaker ("\n")
    history = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    tables = DryTables(single, ())
    # Only the 3 tokens since the breaker can count: the repeat "1 2 3" (3 long) is still allowed through.
    penalty = dry_penalties(history, dry_rule(), tables, 10)
    assert penalty[0, 4] == pytest.approx(0.8 * 1.75)
    # "5 9 1 2 3" repeats, 5 long, but the breaker 9 caps the match at the 3 tokens after it.
    history = torch.tensor([[5, 9, 1, 2, 3, 6, 5, 9, 1, 2, 3]])
    assert dry_penalties(history, dry_rule(), NO_BREAKERS, 10)[0, 6] == pytest.approx(0.8 * 1.75 ** 3)
    assert dry_penalties(history, dry_rule(), tables, 10)[0, 6] == pytest.approx(0.8 * 1.75 ** 1)
    # Fewer tokens since the breaker than the allowed length: no penalty at all.
    assert not dry_penalties(torch.tensor([[1, 2, 3, 1, 2, 9, 1]]), dry_rule(), tables, 10).any()
    # A breaker token itself is never penalised.
    history = torch.tensor([[1, 2, 9, 5, 1, 2]])
    assert dry_penalties(history, dry_rule(), tables, 10)[0, 9] == 0


def test_dry_window_limits_how_far_back_it_looks():
    history = torch.tensor([[1, 2, 3, 4, 5, 6, 1, 2, 3]])
    assert dry_penalties(history, dry_rule(), NO_BREAKERS, 10)[0, 4] > 0
    assert not dry_penalties(history, dry_rule(penalty_last_n=5), NO_BREAKERS, 10).any()


def test_dry_left_padding_is_not_a_repeat():
    padded = torch.tensor([[-1, -1, -1, 1, 2, 3, 4, 1, 2, 3]])
    assert torch.equal(dry_penalties(padded, dry_rule(), NO_BREAKERS, 10),
                       dry_penalties(padded[:, 3:], dry_rule(), NO_BREAKERS, 10))


def test_breaker_table_finds_whole_and_overlapping_tokens():
    pieces = [b"a", b"b\n", b"x:", b"ab", b" a", b"b", b"c"]

    def tokenize(text):
        return [pieces.index(text.encode())]

    table = dry_breaker_table(["\n", "ab"], pieces, tokenize)
    # whole breakers inside a token; tokens ending with the start of "ab", then the tokens of the rest
    assert table == {1: [()], 3: [()], 0: [(5,)], 4: [(5,)]}


def test_a_multi_token_breaker_limits_the_match_from_its_last_token():
    from experiments.backends.hf_samplers import _tokens_since_breaker

    tables = DryTables.build({1: [()], 0: [(5,)]}, 10)
    assert tables.single.nonzero().flatten().tolist() == [1] and tables.sequences == ((0, (5,)),)
    history = torch.tensor([[7, 0, 5, 7, 7], [7, 0, 6, 7, 7], [-1, 1, 7, 7, 7]])
    # row 0: "a" + "b" ends two tokens from the end; row 1: no breaker (window 5); row 2: "\n" 3 back
    assert _tokens_since_breaker(history, torch.tensor([5, 5, 4]), tables).tolist() == [2, 5, 3]


# --- the chain and its order -----------------------------------------------------------------------

def test_order_puts_temperature_before_min_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    default = SamplerChain(SamplingConfig(temperature=3.0, min_p=0.3), 4)
    first = SamplerChain(SamplingConfig(temperature=3.0, min_p=0.3, sampler_order=["temperature", "min_p"]), 4)
    # min-p 0.3 on the untempered distribution keeps logits >= 2 + log 0.3 = 0.796: two tokens;
    # at temperature 3 first, the cut is on logits / 3: >= 0.667 - 1.204: all four.
    assert kept(default(None, logits, default.split_draws(None))) == [[True, True, False, False]]
    assert kept(first(None, logits, first.split_draws(None))) == [[True, True, True, True]]


def test_an_order_must_name_every_sampler_the_setting_uses():
    with pytest.raises(ConfigError, match="leaves out min_p"):
        SamplingConfig(min_p=0.1, temperature=2.0, sampler_order=["temperature"])
    with pytest.raises(ConfigError, match="unknown sampler"):
        SamplingConfig(sampler_order=["temperature", "tfs"])
    with pytest.raises(ConfigError, match="more than once"):
        SamplingConfig(sampler_order=["temperature", "temperature"])
    with pytest.raises(ConfigError, match="mirostat"):
        SamplingConfig(mirostat_mode=2, xtc_probability=0.5)


@pytest.mark.parametrize("field,value", [
    ("xtc_probability", 1.5), ("xtc_threshold", 0.6), ("top_n_sigma", 0.0), ("dry_multiplier", -1.0),
    ("dry_base", 1.0), ("dry_allowed_length", 0), ("dry_penalty_last_n", -2), ("dry_sequence_breakers", [""]),
    ("dynatemp_range", -0.1), ("dynatemp_exponent", 0.0),
])
def test_out_of_range_values_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"sampling.{field}="):
        SamplingConfig(**{field: value})


def test_diagnostics_are_entropy_before_and_after_and_candidates_kept():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    chain = SamplerChain(SamplingConfig(top_k=2, temperature=1.0), 4)
    tokens, logprobs, before, after, count = choose_tokens(chain, None, logits, torch.tensor([0.5], dtype=torch.float64),
                                                           diagnostics=True)
    full = torch.softmax(logits[0], 0)
    assert before.item() == pytest.approx(float(-(full * full.log()).sum()), abs=1e-6)
    top2 = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert after.item() == pytest.approx(float(-(top2 * top2.log()).sum()), abs=1e-6)
    assert count.tolist() == [2]
    plain = choose_tokens(chain, None, logits, torch.tensor([0.5], dtype=torch.float64))
    assert torch.equal(plain[0], tokens) and torch.equal(plain[1], logprobs)


def test_xtc_draws_a_coin_beside_the_token_and_greedy_draws_none():
    generator = torch.Generator().manual_seed(3)
    assert draw_uniforms([generator], 0) is None
    assert draw_uniforms([generator, generator], 2).shape == (2, 2)
    chain = SamplerChain(SamplingConfig(xtc_probability=0.5, temperature=0.0), 4)
    assert chain.draws_per_token == 1 and chain.split_draws(torch.tensor([[0.2]])).token is None
