"""llama.cpp's sampler chain as the llamacpp backend builds it, on literal logits.

Real llama.cpp (the vocabulary of the embedded SmolLM2 GGUF, loaded alone);
each expectation is computed by hand from the sampler's definition in
llama.cpp's ``src/llama-sampler.cpp``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.backends.llamacpp_chain import entropy, kept_distribution
from experiments.config import ConfigError, SamplingConfig

NEG_INF = -math.inf


@pytest.fixture(scope="module")
def llm():
    from llama_cpp import Llama

    from experiments.models import embedded_gguf_path

    model = Llama(model_path=str(embedded_gguf_path()), vocab_only=True, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def vocab(llm):
    return llm._model.vocab


def kept(vocab, logits, history=(), seed=0, **sampling) -> dict[int, float]:
    ids, probabilities = kept_distribution(vocab, SamplingConfig(**sampling), seed, logits, history)
    return dict(zip(ids.tolist(), probabilities.tolist()))


def softmax(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def assert_distribution(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(actual) == sorted(expected)
    for token, p in expected.items():
        assert actual[token] == pytest.approx(p, abs=1e-6), f"token {token}"


def test_no_sampler_keeps_the_softmax_of_every_candidate(vocab):
    logits = [1.0, 0.0, -1.0, 2.5]
    assert_distribution(kept(vocab, logits), dict(enumerate(softmax(logits))))


def test_ids_are_sorted_and_minus_infinity_is_not_kept(vocab):
    # top-k sorts the buffer by logit; the result comes back in id order.
    result = kept(vocab, [0.0, 3.0, NEG_INF, 1.0, 2.0], top_k=3)
    assert list(result) == [1, 3, 4]
    assert_distribution(result, dict(zip([1, 3, 4], softmax([3.0, 1.0, 2.0]))))


def test_xtc_with_probability_one_cuts_every_top_choice_but_the_least_likely(vocab):
    p = [0.4, 0.3, 0.2, 0.06, 0.04]
    # 0.4, 0.3 and 0.2 are above the threshold 0.1: the two most likely go, 0.2 stays.
    result = kept(vocab, np.log(p), xtc_probability=1.0, xtc_threshold=0.1)
    assert_distribution(result, {2: 0.2 / 0.3, 3: 0.06 / 0.3, 4: 0.04 / 0.3})


def test_xtc_with_fewer_than_two_candidates_above_the_threshold_does_nothing(vocab):
    p = [0.85, 0.05, 0.05, 0.05]
    result = kept(vocab, np.log(p), xtc_probability=1.0, xtc_threshold=0.1)
    assert_distribution(result, dict(enumerate(p)))


def test_top_n_sigma_keeps_logits_within_n_standard_deviations_of_the_maximum(vocab):
    logits = [0.0, 1.0, 2.0, 3.0, 4.0]  # mean 2, std sqrt(2): keep logits >= 4 - 1.414 = 2.586
    assert_distribution(kept(vocab, logits, top_n_sigma=1.0), {3: softmax([3, 4])[0], 4: softmax([3, 4])[1]})
    # 1.5 sigma reaches down to 1.879: 2 is kept too.
    assert_distribution(kept(vocab, logits, top_n_sigma=1.5), dict(zip([2, 3, 4], softmax([2, 3, 4]))))


def test_top_n_sigma_keeps_every_candidate_when_all_logits_are_equal(vocab):
    assert_distribution(kept(vocab, [0.7] * 4, top_n_sigma=1.0), {token: 0.25 for token in range(4)})


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_dynamic_temperature_follows_the_normalised_entropy(vocab, exponent):
    logits = np.array([2.0, 1.0, 0.0])
    temperature, spread = 1.0, 0.5
    p = softmax(logits)
    normalised_entropy = -(p * np.log(p)).sum() / math.log(3)
    # llama.cpp: T in [T - range, T + range], T - range + 2 range * (H / H_max) ** exponent
    dynamic = (temperature - spread) + 2 * spread * normalised_entropy ** exponent
    result = kept(vocab, logits, temperature=temperature, dynatemp_range=spread, dynatemp_exponent=exponent)
    assert_distribution(result, dict(enumerate(softmax(logits / dynamic))))
    assert dynamic != pytest.approx(1.0)  # the test would not tell a plain temperature apart


def test_an_order_with_temperature_before_min_p_keeps_more_at_high_temperature(vocab):
    logits = [2.0, 1.0, 0.0, -1.0]
    # Default order: min_p on the untempered logits keeps logit >= 2 + ln 0.3 = 0.80, then T=2.
    default = kept(vocab, logits, temperature=2.0, min_p=0.3)
    assert_distribution(default, dict(zip([0, 1], softmax([1.0, 0.5]))))
    # Temperature first: logits become 1, .5, 0, -.5 and min_p keeps >= 1 + ln 0.3 = -0.20.
    tempered_first = kept(vocab, logits, temperature=2.0, min_p=0.3,
                          sampler_order=["temperature", "top_k", "min_p"])
    assert_distribution(tempered_first, dict(zip([0, 1, 2], softmax([1.0, 0.5, 0.0]))))


def test_penalties_use_the_history_and_a_window_of_minus_one_covers_all_of_it(vocab):
    logits = [2.0, -1.0, 0.5, 0.0]
    history = [0, 1, 1, 3]
    # repeat 2: a positive logit is halved, a negative one doubled; frequency 0.1 per count; presence 0.2.
    expected = [2.0 / 2 - 0.1 - 0.2, -1.0 * 2 - 0.2 - 0.2, 0.5, 0.0 * 2 - 0.1 - 0.2]
    for window in (-1, None, 4):
        result = kept(vocab, logits, history, repetition_penalty=2.0, frequency_penalty=0.1, presence_penalty=0.2,
                      repeat_last_n=window)
        assert_distribution(result, dict(enumerate(softmax(expected))))
    # A window of one token sees only the last (token 3).
    only_last = kept(vocab, logits, history, repetition_penalty=2.0, repeat_last_n=1)
    assert_distribution(only_last, dict(enumerate(softmax([2.0, -1.0, 0.5, 0.0 * 2]))))


@pytest.fixture(scope="module")
def words(llm) -> dict[str, int]:
    """Single-token words and the newline (a default DRY sequence breaker)."""
    tokens = {word: llm.tokenize(word.encode(), add_bos=False) for word in (" red", " green", " blue", " cat", "\n")}
    assert all(len(ids) == 1 for ids in tokens.values()), tokens
    return {word: ids[0] for word, ids in tokens.items()}


def dry_logits(words: dict[str, int], n_vocab: int) -> np.ndarray:
    logits = np.full(n_vocab, NEG_INF, dtype=np.float32)
    logits[list(words.values())] = 0.0
    return logits


def test_dry_penalises_the_token_that_would_continue_a_repeated_sequence(vocab, llm, words):
    red, green, blue, cat = words[" red"], words[" green"], words[" blue"], words[" cat"]
    logits = dry_logits(words, llm.n_vocab())
    dry = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    # "red green" repeats (length 2 = allowed length): "blue" would make it 3, penalty 0.8 * 1.75 ** 0.
    result = kept(vocab, logits, [red, green, blue, red, green], **dry)
    expected = {token: 0.0 for token in words.values()}
    expected[blue] = -0.8
    assert_distribution(result, dict(zip(sorted(expected), softmax([expected[t] for t in sorted(expected)]))))
    # "red green blue" repeats (length 3): "cat" would make it 4, penalty 0.8 * 1.75 ** 1.
    result = kept(vocab, logits, [red, green, blue, cat, red, green, blue], **dry)
    expected = {token: 0.0 for token in words.values()}
    expected[cat] = -0.8 * 1.75
    assert_distribution(result, dict(zip(sorted(expected), softmax([expected[t] for t in sorted(expected)]))))


def test_dry_does_not_match_across_a_sequence_breaker(vocab, llm, words):
    red, green, blue, cat, newline = (words[w] for w in (" red", " green", " blue", " cat", "\n"))
    logits = dry_logits(words, llm.n_vocab())
    uniform = {token: 1 / len(words) for token in words.values()}
    dry = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    # With "green" in the middle "red green blue" repeats and "cat" is penalised ...
    assert kept(vocab, logits, [red, green, blue, cat, red, green, blue], **dry) != pytest.approx(uniform)
    # ... with a newline there the repeat after it is one token long: nothing is penalised.
    assert_distribution(kept(vocab, logits, [red, newline, blue, cat, red, newline, blue], **dry), uniform)
    # A breaker of our own works the same way; the default breakers then no longer apply.
    assert_distribution(kept(vocab, logits, [red, green, blue, cat, red, green, blue],
                             dry_sequence_breakers=[" green"], **dry), uniform)
    # The breaker itself is never penalised, though it would continue "red green".
    result = kept(vocab, logits, [red, green, newline, red, green], **dry)
    assert_distribution(result, uniform)


def test_temperature_zero_keeps_the_chain_and_skips_temperature(vocab):
    logits = [2.0, 1.0, 0.0, -1.0]
    assert_distribution(kept(vocab, logits, temperature=0.0, top_k=2), dict(zip([0, 1], softmax([2.0, 1.0]))))


def test_entropy_of_logits():
    assert entropy(np.zeros(4, dtype=np.float32)) == pytest.approx(math.log(4))
    assert entropy(np.array([0.0, -np.inf], dtype=np.float32)) == pytest.approx(0.0)


def test_a_logit_bias_outside_the_vocabulary_is_refused_by_name(vocab):
    with pytest.raises(ConfigError, match=r"sampling.logit_bias: token id 49152 is outside the vocabulary"):
        kept(vocab, [0.0, 1.0], logit_bias={49152: 1.0})
    assert_distribution(kept(vocab, [0.0, 1.0], logit_bias={0: 1.0}), {0: 0.5, 1: 0.5})


def test_a_grammar_llama_cpp_cannot_parse_is_refused_by_name(vocab):
    with pytest.raises(ConfigError, match=r"sampling.grammar="):
        kept(vocab, [0.0, 1.0], grammar="root ::= (")


def test_mirostat_has_no_kept_distribution_before_its_draw(vocab):
    with pytest.raises(ValueError, match="mirostat_mode=2"):
        kept(vocab, [0.0, 1.0], mirostat_mode=2)
