"""The llamacpp backend's own generation loop on the real embedded model.

Settings llama-cpp-python's ``Llama.generate`` supported must give the stories
they gave before the backend built its own sampler chain; the reference below
is the previous loop, written out with its options.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from experiments.backends.base import StoryRequest
from experiments.backends.llamacpp import LlamaCppBackend
from experiments.config import LlamaCppBackendConfig, SamplingConfig

pytestmark = pytest.mark.slow

PROMPT = "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\nHere it is:\n\n"
MAX_TOKENS = 24
REQUESTS = [StoryRequest(story_id=f"story-{seed}", sample_index=index, seed=seed, prompt=PROMPT)
            for index, seed in enumerate((11, 2024))]


@pytest.fixture(scope="module")
def backend():
    backend = LlamaCppBackend(LlamaCppBackendConfig(n_ctx=512))
    backend.load()
    yield backend
    backend.close()


def previous_loop(llm, request: StoryRequest, options: dict[str, Any], repeat_last_n: int | None,
                  logit_bias: dict[int, float] | None = None) -> tuple[str, list[float]]:
    """The backend's loop before it had a chain of its own: ``Llama.generate`` with these options."""
    from llama_cpp import LogitsProcessorList

    options = dict(options)
    if logit_bias:
        bias = np.zeros(llm.n_vocab(), dtype=np.float32)
        for token, value in logit_bias.items():
            bias[token] = value
        options["logits_processor"] = LogitsProcessorList([lambda _ids, logits: logits + bias])
    llm.last_n_tokens_size = repeat_last_n if repeat_last_n is not None else 64
    llm.set_seed(request.seed)
    prompt_tokens = llm.tokenize(request.prompt.encode("utf-8"), add_bos=False, special=True)
    tokens, logprobs = [], []
    n_vocab = llm.n_vocab()
    import llama_cpp

    # From an empty cache, as the backend decodes every story: Llama.generate would otherwise reuse the cached
    # prompt of the story before and evaluate only its last token, one token at a time, and on some CPUs
    # (AVX2-only EPYC) a one-token evaluation's logits differ in their last bits from a batched one's.
    llm.reset()
    for token in llm.generate(prompt_tokens, reset=True, **options):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        top = logits.max()
        logprobs.append(float(logits[token] - top - np.log(np.exp(logits - top).sum())))
        tokens.append(token)
        if len(tokens) >= MAX_TOKENS:
            break
    return llm.detokenize(tokens).decode("utf-8", errors="replace"), logprobs


NEUTRAL = {"temp": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
           "presence_penalty": 0.0, "frequency_penalty": 0.0, "mirostat_mode": 0, "mirostat_tau": 5.0,
           "mirostat_eta": 0.1}
OLD_SETTINGS = {
    "T 1.0, top_k 50": (dict(temperature=1.0, top_k=50), dict(NEUTRAL, top_k=50)),
    "T 0.7, top_p 0.9, min_p 0.05": (dict(temperature=0.7, top_p=0.9, min_p=0.05),
                                     dict(NEUTRAL, temp=0.7, top_p=0.9, min_p=0.05)),
    "T 1.2, typical_p 0.9": (dict(temperature=1.2, typical_p=0.9), dict(NEUTRAL, temp=1.2, typical_p=0.9)),
    "penalties over 16 tokens": (
        dict(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3, repeat_last_n=16),
        dict(NEUTRAL, repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3)),
    "T 0, greedy": (dict(temperature=0.0), dict(NEUTRAL, temp=0.0)),
    "logit bias": (dict(temperature=0.8, logit_bias={198: 2.0, 260: -3.0}), dict(NEUTRAL, temp=0.8)),
    "mirostat 2": (dict(temperature=1.0, mirostat_mode=2, mirostat_tau=3.0),
                   dict(NEUTRAL, mirostat_mode=2, mirostat_tau=3.0)),
}


@pytest.mark.parametrize("name", OLD_SETTINGS)
def test_settings_the_previous_loop_supported_give_the_same_stories(backend, name):
    setting, old_options = OLD_SETTINGS[name]
    sampling = SamplingConfig(max_tokens=MAX_TOKENS, **setting)
    stories = list(backend.generate(REQUESTS, sampling))
    for request, story in zip(REQUESTS, stories):
        text, logprobs = previous_loop(backend.llm, request, old_options, sampling.repeat_last_n, sampling.logit_bias)
        assert story.text == text, f"{name}, seed {request.seed}"
        assert story.token_logprobs == logprobs
    assert stories[0].text != stories[1].text or name == "T 0, greedy"


def test_diagnostics_do_not_change_the_story_and_have_one_entry_per_token(backend):
    sampling = SamplingConfig(temperature=1.0, top_k=40, min_p=0.05, max_tokens=MAX_TOKENS)
    backend.record_diagnostics = False
    plain = list(backend.generate(REQUESTS, sampling))
    backend.record_diagnostics = True
    try:
        diagnosed = list(backend.generate(REQUESTS, sampling))
    finally:
        backend.record_diagnostics = False
    for without, with_ in zip(plain, diagnosed):
        assert without.sampler_diagnostics is None
        assert (with_.text, with_.token_logprobs) == (without.text, without.token_logprobs)
        record = with_.sampler_diagnostics
        assert [len(record[key]) for key in ("entropy_before", "entropy_after", "candidates_kept")] == \
            [with_.n_tokens] * 3
        for before, after, kept, logprob in zip(record["entropy_before"], record["entropy_after"],
                                                record["candidates_kept"], with_.token_logprobs):
            assert 1 <= kept <= 40
            assert 0 <= after <= math.log(kept) + 1e-9
            assert before >= 0 and logprob <= 0
        # Truncation only removes candidates: at T=1 what is left is never more uncertain in total.
        assert np.mean(record["entropy_after"]) <= np.mean(record["entropy_before"])


def test_greedy_diagnostics_keep_one_candidate(backend):
    backend.record_diagnostics = True
    try:
        story = next(iter(backend.generate(REQUESTS[:1], SamplingConfig(temperature=0.0, max_tokens=8))))
    finally:
        backend.record_diagnostics = False
    assert story.sampler_diagnostics["candidates_kept"] == [1] * story.n_tokens
    assert story.sampler_diagnostics["entropy_after"] == [0.0] * story.n_tokens


def test_the_samplers_for_creative_text_run_in_the_order_given(backend):
    creative = dict(temperature=1.5, xtc_probability=0.5, xtc_threshold=0.1, top_n_sigma=2.0, dry_multiplier=0.8,
                    dynatemp_range=0.5, max_tokens=MAX_TOKENS)
    default = list(backend.generate(REQUESTS, SamplingConfig(**creative)))
    reordered = list(backend.generate(REQUESTS, SamplingConfig(
        **creative, sampler_order=["temperature", "dry", "top_n_sigma", "xtc"])))
    again = list(backend.generate(REQUESTS, SamplingConfig(**creative)))
    assert [s.text for s in default] == [s.text for s in again]  # the seed alone decides
    assert all(story.n_tokens >= 1 for story in default + reordered)
    assert [s.text for s in default] != [s.text for s in reordered]
