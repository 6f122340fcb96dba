"""Same setting, same distribution: the hf chain and llama.cpp's own chain keep the same candidates
with the same probabilities (to 1e-5), for each sampler and for two orders.

Both chains get the same float32 logits over the embedded model's whole vocabulary and the same
history (the tokens generated before, for the penalties and DRY): llama.cpp's through
``llamacpp_chain.kept_distribution`` (its samplers, run without the final draw), the hf backend's
through ``hf_samplers.SamplerChain``. XTC runs at probability 1, so its coin always says cut on both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments import samplers
from experiments.config import SamplingConfig

REVERSED = list(reversed(samplers.DEFAULT_ORDER))
TEMPERATURE_FIRST = ["temperature", "penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc"]

SETTINGS = {
    "temperature": dict(temperature=1.5),
    "top_k": dict(temperature=1.5, top_k=40),
    "top_p": dict(temperature=1.5, top_p=0.9),
    "min_p": dict(temperature=1.5, min_p=0.05),
    "typical_p": dict(temperature=1.5, typical_p=0.9),
    "penalties": dict(temperature=1.5, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2,
                      repeat_last_n=16, top_k=200),
    "xtc": dict(temperature=1.5, xtc_probability=1.0, xtc_threshold=0.05),
    "top_n_sigma": dict(temperature=1.5, top_n_sigma=1.0),
    "dry": dict(temperature=1.5, dry_multiplier=0.8, top_k=200),
    "dry_breakers": dict(temperature=1.5, dry_multiplier=0.8, dry_allowed_length=1,
                         dry_sequence_breakers=["\n", " keeper walked"], top_k=200),
    "dynatemp": dict(temperature=1.5, dynatemp_range=0.5, dynatemp_exponent=1.5),
    "all": dict(temperature=1.5, repetition_penalty=1.1, repeat_last_n=-1, dry_multiplier=0.5, top_n_sigma=2.0,
                top_k=100, typical_p=0.999, top_p=0.999, min_p=0.0001, xtc_probability=1.0, xtc_threshold=0.05,
                dynatemp_range=0.3),
}
ORDERS = {"default": None, "temperature first": TEMPERATURE_FIRST, "reversed": REVERSED}


@pytest.fixture(scope="module")
def llama_vocab():
    from llama_cpp import Llama

    from experiments.models import embedded_gguf_path

    model = Llama(model_path=str(embedded_gguf_path()), vocab_only=True, verbose=False)
    yield model._model.vocab
    model.close()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from experiments.models import converted_transformers_dir, embedded_gguf_path

    return AutoTokenizer.from_pretrained(str(converted_transformers_dir(embedded_gguf_path())))


@pytest.fixture(scope="module")
def logits(tokenizer):
    """A story-like next-token distribution: a long tail, and a head of a few likely tokens."""
    vocab_size = 49152
    generator = np.random.default_rng(14)
    values = generator.normal(0.0, 2.0, vocab_size).astype(np.float32)
    head = tokenizer(" the lighthouse keeper was walking along the shore", add_special_tokens=False)["input_ids"]
    values[head] += np.linspace(14.0, 9.0, len(head), dtype=np.float32)
    return values


@pytest.fixture(scope="module")
def history(tokenizer):
    """Generated tokens with a repeated phrase after a line break (DRY's default breaker), which
    spans " keeper walked", a breaker of two tokens (head " keeper", then " walked")."""
    text = "The lighthouse keeper walked along the shore.\nThen the lighthouse keeper walked along the"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_kept(sampling, logits, history, tokenizer):
    from experiments.backends.hf_samplers import Draws, SamplerChain, dry_tables_for

    vocab_size = len(logits)
    chain = SamplerChain(sampling, vocab_size, dry_tables_for(sampling, tokenizer, vocab_size))
    state = chain(torch.tensor([history]), torch.from_numpy(logits)[None],
                  Draws(token=torch.tensor([0.5], dtype=torch.float64), xtc=torch.tensor([0.0])))
    scores = state.scores[0]
    ids = state.token_ids()[0]
    finite = torch.isfinite(scores)
    ids, final = ids[finite].numpy(), scores[finite].double().numpy()
    order = np.argsort(ids, kind="stable")
    ids, final = ids[order], final[order]
    probabilities = np.exp(final - final.max())
    return ids, probabilities / probabilities.sum()


@pytest.mark.parametrize("order", list(ORDERS), ids=list(ORDERS))
@pytest.mark.parametrize("name", list(SETTINGS))
def test_hf_and_llama_cpp_keep_the_same_candidates_with_the_same_probabilities(name, order, llama_vocab, tokenizer,
                                                                              logits, history):
    from experiments.backends.llamacpp_chain import kept_distribution

    sampling = SamplingConfig(**SETTINGS[name], sampler_order=ORDERS[order])
    llama_ids, llama_probabilities = kept_distribution(llama_vocab, sampling, 7, logits, history)
    hf_ids, hf_probabilities = hf_kept(sampling, logits, history, tokenizer)
    assert len(llama_ids) > 1, "the case should leave a choice"
    assert hf_ids.tolist() == llama_ids.tolist(), (
        f"kept sets differ: only llama.cpp {sorted(set(llama_ids) - set(hf_ids))[:10]}, "
        f"only hf {sorted(set(hf_ids) - set(llama_ids))[:10]}")
    np.testing.assert_allclose(hf_probabilities, llama_probabilities, rtol=0, atol=1e-5)


def test_the_cases_exercise_what_they_name(llama_vocab, tokenizer, logits, history):
    """Guard against vacuous agreement: each sampler changes what temperature alone keeps."""
    from experiments.backends.llamacpp_chain import kept_distribution

    alone = kept_distribution(llama_vocab, SamplingConfig(temperature=1.5), 7, logits, history)
    for name in ("top_k", "top_p", "min_p", "typical_p", "xtc", "top_n_sigma", "dynatemp"):
        ids, probabilities = kept_distribution(llama_vocab, SamplingConfig(**SETTINGS[name]), 7, logits, history)
        changed = len(ids) != len(alone[0]) or not np.allclose(probabilities, alone[1], atol=1e-6)
        assert changed, name
    for name in ("penalties", "dry", "dry_breakers"):
        base = SamplingConfig(temperature=1.5, top_k=200)
        ids, probabilities = kept_distribution(llama_vocab, SamplingConfig(**SETTINGS[name]), 7, logits, history)
        base_ids, base_probabilities = kept_distribution(llama_vocab, base, 7, logits, history)
        assert ids.tolist() != base_ids.tolist() or not np.allclose(probabilities, base_probabilities, atol=1e-6), name
    # The two-token breaker " keeper walked" caps the repeat: DRY with it penalises less than without it.
    with_breaker = kept_distribution(llama_vocab, SamplingConfig(**{**SETTINGS["dry"], "dry_allowed_length": 1,
                                                                    "dry_sequence_breakers": ["\n"]}), 7, logits,
                                     history)
    assert not np.allclose(with_breaker[1], kept_distribution(llama_vocab, SamplingConfig(**SETTINGS["dry_breakers"]),
                                                              7, logits, history)[1], atol=1e-6)
    # The orders differ where they should: temperature before min-p changes what min-p keeps.
    min_p = dict(temperature=3.0, min_p=0.05)
    default = kept_distribution(llama_vocab, SamplingConfig(**min_p), 7, logits, history)[0]
    first = kept_distribution(llama_vocab, SamplingConfig(**min_p, sampler_order=["temperature", "min_p"]), 7,
                              logits, history)[0]
    assert len(first) > len(default)
