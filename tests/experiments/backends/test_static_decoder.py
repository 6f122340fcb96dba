"""The static decoder: the same numbers as transformers' own forward, and a row's numbers its own.

Small random Llama and Qwen2 models (no download) run in the fast tier;
the embedded SmolLM2 runs the same invariance checks at its real shapes in
the slow tier.
"""

from __future__ import annotations

import pytest
import torch

from experiments.backends.static_decoder import (ATTENTION_CHUNK, STATIC_ROWS_PER_TILE, StaticDecoder, cache_length,
                                                 unsupported_reason)


def tiny_model(architecture: str = "llama", dtype=torch.float32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if architecture == "qwen2":  # q, k and v projections with biases
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval().to(dtype)


@pytest.fixture(scope="module")
def embedded_bf16():
    from experiments.models import embedded_gguf_path, load_transformers_causal_lm

    model, _ = load_transformers_causal_lm(embedded_gguf_path(), "bfloat16")
    return model


def decoder_for(model, slots: int = 64, max_len: int = 256) -> StaticDecoder:
    decoder = StaticDecoder(model, STATIC_ROWS_PER_TILE)
    decoder.allocate(slots, max_len)
    return decoder


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_logits_match_transformers_forward_in_float32(architecture):
    model = tiny_model(architecture)
    prompt, continuation = [3, 17, 5, 42, 8, 1, 60], [11, 23, 7, 90, 4, 4, 31, 2, 77, 50]
    with torch.inference_mode():
        expected = model(torch.tensor([prompt + continuation])).logits[0].float()
    decoder = decoder_for(model, slots=8, max_len=128)
    logits, prompt_cache = decoder.prefill(prompt)
    torch.testing.assert_close(logits, expected[len(prompt) - 1], rtol=0, atol=1e-4)
    decoder.place(5, prompt_cache)
    for offset, token in enumerate(continuation):
        step = decoder.step(torch.tensor([0] * 5 + [token]), torch.tensor([0] * 5 + [len(prompt) + offset]))
        torch.testing.assert_close(step[5], expected[len(prompt) + offset], rtol=0, atol=1e-4)


def run_alone_and_in_company(model, prompt: list[int], tokens: list[int]):
    """A row's logits at each step: alone in slot 0, and in slot 37 of 40 rows whose neighbours run further."""
    alone = decoder_for(model)
    logits, prompt_cache = alone.prefill(prompt)
    alone.place(0, prompt_cache)
    company = decoder_for(model)
    company.place(37, prompt_cache)
    generator = torch.Generator().manual_seed(1)
    vocab = logits.shape[0]
    # Neighbours' caches hold other stories, and they sit up to 190 positions on: more chunks than the row needs.
    for slot in range(40):
        if slot != 37:
            company.place(slot, [(torch.randn(keys.shape, generator=generator).to(keys.dtype),
                                  torch.randn(values.shape, generator=generator).to(values.dtype))
                                 for keys, values in prompt_cache])
    results = []
    for offset, token in enumerate(tokens):
        position = len(prompt) + offset
        mine = alone.step(torch.tensor([token]), torch.tensor([position]))[0]
        others = torch.randint(0, vocab, (40,), generator=generator)
        positions = torch.randint(position, 190, (40,), generator=generator)
        others[37], positions[37] = token, position
        theirs = company.step(others, positions)[37]
        results.append((mine, theirs))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_logits_do_not_depend_on_its_slot_neighbours_or_tiles(dtype):
    model = tiny_model(dtype=dtype)
    for step, (mine, theirs) in enumerate(run_alone_and_in_company(model, [5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15])):
        assert torch.equal(mine, theirs), f"step {step}: the row's logits changed with its company"


@pytest.mark.slow
def test_the_embedded_models_rows_do_not_depend_on_their_company(embedded_bf16):
    pairs = run_alone_and_in_company(embedded_bf16, [1, 9690, 28, 1, 4093, 30], [504, 1345, 28, 253, 2112, 30, 1100])
    for step, (mine, theirs) in enumerate(pairs):
        assert torch.equal(mine, theirs), f"step {step}: the row's logits changed with its company"


def test_a_moved_row_continues_as_if_it_had_stayed():
    model = tiny_model()
    decoder = decoder_for(model, slots=40)
    logits, prompt_cache = decoder.prefill([4, 5, 6])
    for slot in (3, 35):
        decoder.place(slot, prompt_cache)
    tokens, positions = torch.zeros(36, dtype=torch.long), torch.zeros(36, dtype=torch.long)
    tokens[[3, 35]], positions[[3, 35]] = 9, 3
    decoder.step(tokens, positions)
    decoder.move(35, 0)
    tokens, positions = torch.zeros(36, dtype=torch.long), torch.zeros(36, dtype=torch.long)
    tokens[[0, 3, 35]], positions[[0, 3, 35]] = 12, 4
    after = decoder.step(tokens, positions)
    assert torch.equal(after[0], after[35]) and torch.equal(after[0], after[3])


def test_positions_past_the_cache_and_bad_row_counts_are_refused():
    decoder = decoder_for(tiny_model(), slots=4, max_len=64)
    with pytest.raises(ValueError, match="1 to 4 rows"):
        decoder.step(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="does not fit"):
        decoder.prefill(list(range(65)))
    with pytest.raises(ValueError, match="multiples of"):
        decoder.allocate(4, 100)


def test_cache_length_is_whole_chunks_of_the_prompt_and_max_tokens():
    assert cache_length(35, 256) == 320 and cache_length(64, 0) == 64 and cache_length(1, 1) == ATTENTION_CHUNK


def test_models_it_cannot_run_are_named_with_the_reason():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "GPT2LMHeadModel is not one of" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="cannot run this model: GPT2LMHeadModel"):
        StaticDecoder(gpt2, STATIC_ROWS_PER_TILE)
    assert unsupported_reason(tiny_model()) is None


def test_a_cache_that_grows_gives_the_numbers_of_one_allocated_whole():
    model = tiny_model()
    whole, growing = StaticDecoder(model, STATIC_ROWS_PER_TILE), StaticDecoder(model, STATIC_ROWS_PER_TILE)
    whole.allocate(2, 512)
    growing.allocate(2, 512, initial_len=64)
    logits, prompt_cache = whole.prefill([7, 8, 9])
    for decoder in (whole, growing):
        decoder.place(1, prompt_cache)
    generator = torch.Generator().manual_seed(3)
    for position in range(3, 140):
        token = torch.randint(0, 96, (), generator=generator).item()
        mine = growing.step(torch.tensor([0, token]), torch.tensor([0, position]))[1]
        assert torch.equal(mine, whole.step(torch.tensor([0, token]), torch.tensor([0, position]))[1]), position
    assert growing.cached_len == 256 and whole.cached_len == 512  # 64, then 128, then doubled to 256
    with pytest.raises(ValueError, match="past the cache"):
        growing.step(torch.tensor([1]), torch.tensor([512]))
