"""The static decoder's attention kernel: right against float64, and each row's numbers its own."""

import logging

import pytest
import torch

from experiments.backends import attention_kernel
from experiments.backends.static_decoder import ATTENTION_CHUNK, decode_attention

pytestmark = pytest.mark.skipif(attention_kernel.unavailable_reason() is not None,
                                reason=f"the kernel cannot be built here: {attention_kernel.unavailable_reason()}")


@pytest.fixture(scope="module", autouse=True)
def kernel():
    attention_kernel.load()


def make_cache(slots, kv_heads, head_dim, positions, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    chunks = positions // ATTENTION_CHUNK
    keys = torch.randn(slots, kv_heads, chunks, head_dim, ATTENTION_CHUNK, generator=generator).to(dtype)
    values = torch.randn(slots, kv_heads, positions, head_dim, generator=generator).to(dtype)
    return keys, values


def reference(queries, scale, keys, values, positions):
    """Float64 softmax attention of each row over positions 0..its own."""
    rows, kv_heads, group, head_dim = queries.shape
    by_position = keys.double().permute(0, 1, 2, 4, 3).reshape(keys.shape[0], kv_heads, -1, head_dim)
    out = torch.empty(queries.shape, dtype=torch.float64)
    for row in range(rows):
        seen = int(positions[row]) + 1
        scores = torch.einsum("hgd,hpd->hgp", queries[row].double() * scale, by_position[row, :, :seen])
        out[row] = torch.einsum("hgp,hpd->hgd", scores.softmax(-1), values[row, :, :seen].double())
    return out


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("group, head_dim", [(3, 64), (1, 64), (4, 64), (7, 64), (2, 128), (5, 32)])
def test_attention_matches_float64_softmax_attention(dtype, tolerance, group, head_dim):
    rows, kv_heads = 6, 2
    keys, values = make_cache(rows, kv_heads, head_dim, 4 * ATTENTION_CHUNK, dtype)
    positions = torch.tensor([0, 62, 63, 64, 130, 255])  # chunk edges, the first and the last position
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(rows, kv_heads, group, head_dim, generator=generator).to(dtype)
    new_keys = torch.randn(rows, kv_heads, head_dim, generator=generator).to(dtype)
    new_values = torch.randn(rows, kv_heads, head_dim, generator=generator).to(dtype)
    scale = head_dim ** -0.5
    out = decode_attention(queries, scale, new_keys, new_values, keys, values, positions)
    for row, position in enumerate(positions.tolist()):  # the new key and value are written first
        chunk, offset = divmod(position, ATTENTION_CHUNK)
        assert torch.equal(keys[row, :, chunk, :, offset], new_keys[row])
        assert torch.equal(values[row, :, position], new_values[row])
    assert out.dtype == dtype and out.shape == queries.shape
    assert (out.double() - reference(queries, scale, keys, values, positions)).abs().max() < tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_numbers_do_not_depend_on_the_other_rows_its_slot_or_the_cache_length(dtype):
    rows, kv_heads, group, head_dim = 8, 3, 3, 64
    keys, values = make_cache(rows, kv_heads, head_dim, 8 * ATTENTION_CHUNK, dtype)
    positions = torch.tensor([5, 500, 64, 200, 1, 300, 127, 450])
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(rows, kv_heads, group, head_dim, generator=generator).to(dtype)
    new_keys = torch.randn(rows, kv_heads, head_dim, generator=generator).to(dtype)
    new_values = torch.randn(rows, kv_heads, head_dim, generator=generator).to(dtype)
    together = decode_attention(queries, 0.125, new_keys, new_values, keys.clone(), values.clone(), positions)
    for row in range(rows):
        # Alone, in the first slot of a cache twice as long (its own positions copied in).
        own_keys, own_values = make_cache(1, kv_heads, head_dim, 16 * ATTENTION_CHUNK, dtype, seed=9)
        own_keys[0, :, :8] = keys[row]
        own_values[0, :, :8 * ATTENTION_CHUNK] = values[row]
        alone = decode_attention(queries[row:row + 1], 0.125, new_keys[row:row + 1], new_values[row:row + 1],
                                 own_keys, own_values, positions[row:row + 1])
        assert torch.equal(alone[0], together[row]), row
    # And whatever the number of threads.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = decode_attention(queries, 0.125, new_keys, new_values, keys.clone(), values.clone(), positions)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, together)


def test_a_position_outside_the_cache_is_refused_by_name():
    keys, values = make_cache(2, 1, 64, ATTENTION_CHUNK, torch.float32)
    queries, new = torch.zeros(2, 1, 1, 64), torch.zeros(2, 1, 64)
    with pytest.raises(RuntimeError, match="position 64 of row 1 is outside the cache's 64 positions"):
        decode_attention(queries, 1.0, new, new, keys, values, torch.tensor([3, 64]))
    with pytest.raises(RuntimeError, match="one dtype"):
        decode_attention(queries.bfloat16(), 1.0, new, new, keys, values, torch.tensor([3, 4]))


def test_without_a_compiler_auto_takes_the_transformers_decoder_and_static_is_refused(monkeypatch, caplog):
    from experiments.backends.hf import HFBackend
    from experiments.config import ConfigError, HFBackendConfig

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "no C++ compiler" in attention_kernel.unavailable_reason()
    with caplog.at_level(logging.WARNING):
        assert HFBackend(HFBackendConfig()).identity()["decoder"] == "transformers"
    assert "attention kernel cannot be built here" in caplog.text
    with pytest.raises(ConfigError, match="backend.decoder=static needs its attention kernel"):
        HFBackend(HFBackendConfig(decoder="static")).variant()
