"""A Llama-family decoding step with fixed shapes and a static KV cache, for continuous batching.

transformers' own forward keeps one position for the whole batch and spends
most of a decoding step in Python (measured: about two thirds of a step at
batch 64 on 2 cores). This runs the same weights with a few fused tensors per
layer instead, and gives every slot of the cache its own position, so that a
finished story's slot can take the next story at once.

Batch invariance rests on two things. Every matrix multiply sees exactly
``rows_per_tile`` rows (see ``row_tiles.py`` for why the number of rows
matters on a CPU). Attention is a kernel of our own
(``decode_attention.cpp``, compiled once per machine by
``attention_kernel.py``) whose every sum has the order its source gives it,
and which reads each row's own positions and nothing else. So a row's
numbers are its own: they do not depend on the other rows, on which slot it
sits in, on how long the other stories are, or on how many tiles run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from experiments.backends import attention_kernel

# transformers model classes whose decoder layers are the Llama block: pre-norm
# RMSNorm, rotary attention with grouped KV heads, a gated SiLU MLP; and the
# GGUF architectures transformers converts to them.
SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})
GGUF_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})

# Rows of every matrix multiply. A constant, not a setting: a story's numbers
# depend on it. 32 rather than 64: with 32 or fewer stories running, 64-row
# tiles made the whole run about 1.5x as long (32 stories x 256 tokens,
# alternating: 402 and 427 tokens/s with 32 rows, 251 and 285 with 64).
STATIC_ROWS_PER_TILE = 32

# The keys are stored in chunks of this many positions (decode_attention.cpp's CHUNK); the cache's
# length is a whole number of chunks.
ATTENTION_CHUNK = 64

# Named in the stories' ids (hf's variant), and changed whenever this decoder's arithmetic changes, so
# that stories made before a change never share ids with stories made after it. 2: the attention kernel.
NUMERICS = "static-2"


def cache_length(prompt_tokens: int, max_tokens: int) -> int:
    """Positions of the static cache for a prompt and ``max_tokens``: a function of the story's setting alone."""
    return -(-(prompt_tokens + max_tokens) // ATTENTION_CHUNK) * ATTENTION_CHUNK


def unsupported_reason(model) -> Optional[str]:
    """Why ``model`` cannot run on this decoder, or None when it can."""
    config = model.config
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        return f"{name} is not one of {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act={config.hidden_act!r} (only silu)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"sliding-window attention (sliding_window={config.sliding_window})"
    if getattr(config, "mlp_bias", False):
        return "an MLP with biases"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 16 or head_dim > 256:
        return f"head_dim={head_dim} (the attention kernel takes multiples of 16 up to 256)"
    return None


def decode_attention(queries, scale, new_keys, new_values, keys, values, positions) -> torch.Tensor:
    """Write each row's new key and value at its position, then attend: see ``decode_attention.cpp``."""
    return torch.ops.creativity_harness.decode_attention(queries, scale, new_keys, new_values, keys, values, positions)


class Projection:
    """``x @ weight.T + bias`` on tiles of exactly ``rows`` rows (None: all rows at once).

    In bfloat16 the weight is packed once into oneDNN's blocked layout for
    that many rows, as torch.compile's CPU backend does: the same kernel
    without re-laying out the weight on every call (measured 28% less time
    for a step's multiplies at 64 rows, with bit-identical results).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], rows: Optional[int]):
        self.weight, self.bias, self.rows = weight.detach().contiguous(), None if bias is None else bias.detach(), rows
        self.packed = None
        # oneDNN's bfloat16 path needs AVX512 (BW, VL, DQ) or AVX-NE-CONVERT; an AVX2-only CPU (some EPYCs)
        # has neither and multiplies the same tiles with F.linear.
        if (rows is not None and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)

    def _tile(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(inputs, self.packed, self.bias, "none", [], "")
        return F.linear(inputs, self.weight, self.bias)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if rows is None or inputs.shape[0] == rows:
            return self._tile(inputs)
        return torch.cat([self._tile(inputs[start:start + rows]) for start in range(0, inputs.shape[0], rows)])


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Projection              # q, k and v projections stacked: one matrix multiply instead of three
    output: Projection
    post_norm: torch.Tensor
    gate_up: Projection          # gate and up projections stacked
    down: Projection


class StaticDecoder:
    """Decodes up to ``slots`` sequences at once, each at its own position, over a cache of ``max_len`` positions."""

    def __init__(self, model, rows_per_tile: Optional[int]):
        """``rows_per_tile``: the rows of every matrix multiply; None multiplies all rows at once (not batch-invariant)."""
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the static decoder cannot run this model: {reason}")
        attention_kernel.load()
        config = model.config
        self.rows_per_tile = rows_per_tile
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.hidden = config.hidden_size
        decoder = model.model
        self.rotary = decoder.rotary_emb
        self.dtype = decoder.embed_tokens.weight.dtype
        self.embed = decoder.embed_tokens.weight.detach()
        self.final_norm = decoder.norm.weight.detach()
        self.lm_head = Projection(model.lm_head.weight, model.lm_head.bias, rows_per_tile)
        self.layers = [self._layer(layer) for layer in decoder.layers]
        self.slots = self.max_len = self.cached_len = 0
        self.keys = self.values = None

    def cache_bytes(self, slots: int, positions: int) -> int:
        """Memory of the keys and values for ``slots`` sequences of ``positions`` positions."""
        return 2 * len(self.layers) * slots * self.kv_heads * positions * self.head_dim * self.embed.element_size()

    def allocate(self, slots: int, max_len: int, initial_len: Optional[int] = None) -> None:
        """A zeroed cache of ``slots`` sequences of up to ``max_len`` positions (whole chunks).

        It holds ``initial_len`` positions at first (default all) and grows
        as the longest story needs more, so a run whose stories end long
        before ``max_tokens`` never holds a cache for ``max_tokens``. Its
        length does not change any number: attention reads the chunks the
        longest row has reached, whatever the cache holds beyond them.
        """
        initial_len = initial_len or max_len
        if max_len % ATTENTION_CHUNK or initial_len % ATTENTION_CHUNK:
            raise ValueError(f"cache lengths {initial_len} and {max_len} must be multiples of {ATTENTION_CHUNK} "
                             "(see cache_length)")
        if slots == self.slots and max_len <= self.max_len and self.cached_len >= initial_len:
            self.keys.zero_()
            self.values.zero_()
            return
        self.slots, self.max_len = slots, max_len
        self.cos, self.sin = self._rotary_tables(self.rotary, max_len)
        self.keys = self.values = None
        self._resize(min(initial_len, max_len))

    def _resize(self, length: int) -> None:
        """Hold ``length`` positions, keeping what is cached (zeros after it)."""
        chunks = length // ATTENTION_CHUNK
        # Keys chunk by chunk, each chunk transposed (head_dim x chunk): the kernel reads one key
        # dimension of a chunk's positions as whole vectors.
        keys = torch.zeros((len(self.layers), self.slots, self.kv_heads, chunks, self.head_dim, ATTENTION_CHUNK),
                           dtype=self.dtype)
        # Zeros, not empty: the kernel scores a whole last chunk, past a row's position (then weighs
        # those positions zero); uninitialised memory could make that arithmetic slow or NaN.
        values = torch.zeros((len(self.layers), self.slots, self.kv_heads, length, self.head_dim), dtype=self.dtype)
        if self.keys is not None:
            keys[:, :, :, :self.keys.shape[3]] = self.keys
            values[:, :, :, :self.values.shape[3]] = self.values
        self.keys, self.values, self.cached_len = keys, values, length

    def _hold(self, length: int) -> None:
        """Grow the cache (doubling, up to ``max_len``) until it holds ``length`` positions."""
        if length > self.max_len:
            raise ValueError(f"position {length - 1} is past the cache's {self.max_len} positions")
        if length > self.cached_len:
            self._resize(min(self.max_len, max(length, 2 * self.cached_len)))

    def _layer(self, layer) -> _Layer:
        attention, mlp, rows = layer.self_attn, layer.mlp, self.rows_per_tile
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        qkv_bias = None
        if any(projection.bias is not None for projection in projections):
            qkv_bias = torch.cat([projection.bias.detach() if projection.bias is not None
                                  else projection.weight.new_zeros(projection.out_features) for projection in projections])
        return _Layer(
            input_norm=layer.input_layernorm.weight.detach(),
            qkv=Projection(torch.cat([projection.weight.detach() for projection in projections]), qkv_bias, rows),
            output=Projection(attention.o_proj.weight, attention.o_proj.bias, rows),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=Projection(torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()]), None, rows),
            down=Projection(mlp.down_proj.weight, None, rows))

    def _rotary_tables(self, rotary, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for every position, from the model's own rotary module (so any rope scaling applies)."""
        probe = torch.zeros(1, dtype=self.dtype)
        cos, sin = rotary(probe, torch.arange(max_len)[None, :])
        # The sign of rotate_half folded into sin, so that rotating is a roll: -x2 * sin == x2 * -sin exactly.
        half = self.head_dim // 2
        return cos[0].contiguous(), torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1).contiguous()

    # -- the pieces of a layer ------------------------------------------------------------------------------

    def _norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # In float32 and cast back before the weight, as transformers' LlamaRMSNorm does.
        return weight * F.rms_norm(hidden.float(), (self.hidden,), eps=self.eps).to(self.dtype)

    def _rotate(self, heads: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """transformers' rotary embedding, ``x * cos + rotate_half(x) * sin``, with the sign in ``signed_sin``."""
        return heads * cos + heads.roll(self.head_dim // 2, dims=-1) * signed_sin

    def _mlp(self, hidden: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gate, up = layer.gate_up(hidden).chunk(2, dim=-1)
        return layer.down(F.silu(gate) * up)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._norm(hidden, self.final_norm))

    def _pad_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        missing = -tensor.shape[0] % (self.rows_per_tile or 1)
        return tensor if not missing else torch.cat([tensor, tensor.new_zeros(missing, *tensor.shape[1:])])

    # -- prompts ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Encode one prompt alone: (float32 logits of the next token, each layer's (keys, values)).

        The keys and values are placed into a slot with ``place``; encoding a
        prompt once serves every story that continues it.
        """
        count = len(token_ids)
        if not 0 < count <= self.max_len:
            raise ValueError(f"a prompt of {count} tokens does not fit a cache of {self.max_len} positions")
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = self._pad_rows(F.embedding(torch.tensor(token_ids), self.embed))
        cos, sin = self._pad_rows(self.cos[:count])[:, None, :], self._pad_rows(self.sin[:count])[:, None, :]
        prompt_cache = []
        for layer in self.layers:
            qkv = layer.qkv(self._norm(hidden, layer.input_norm))
            rows = qkv.shape[0]
            qk = self._rotate(qkv[:, :q_size + kv_size].view(rows, self.heads + self.kv_heads, self.head_dim), cos, sin)
            queries = qk[:count, :self.heads].transpose(0, 1)[None]
            keys = qk[:count, self.heads:].transpose(0, 1).contiguous()
            values = qkv[:count, q_size + kv_size:].view(count, self.kv_heads, self.head_dim).transpose(0, 1).contiguous()
            prompt_cache.append((keys, values))
            attended = F.scaled_dot_product_attention(queries, keys[None], values[None], is_causal=True,
                                                      enable_gqa=self.kv_heads != self.heads)
            attended = self._pad_rows(attended[0].transpose(0, 1).reshape(count, q_size))
            hidden = hidden + layer.output(attended)
            hidden = hidden + self._mlp(self._norm(hidden, layer.post_norm), layer)
        return self._logits(self._pad_rows(hidden[count - 1:count]))[0].float(), prompt_cache

    def place(self, slot: int, prompt_cache: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put a prompt's keys and values at the start of ``slot``."""
        length = prompt_cache[0][0].shape[1]
        chunks = -(-length // ATTENTION_CHUNK)
        self._hold(chunks * ATTENTION_CHUNK)
        for index, (keys, values) in enumerate(prompt_cache):
            padded = F.pad(keys, (0, 0, 0, chunks * ATTENTION_CHUNK - length))
            self.keys[index, slot, :, :chunks] = padded.view(self.kv_heads, chunks, ATTENTION_CHUNK,
                                                             self.head_dim).transpose(-1, -2)
            self.values[index, slot, :, :length] = values

    def move(self, source: int, target: int) -> None:
        """Copy one slot's whole cache into another (to pack the running sequences into fewer tiles)."""
        self.keys[:, target] = self.keys[:, source]
        self.values[:, target] = self.values[:, source]

    # -- one step -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Feed ``tokens[i]`` at ``positions[i]`` into slot i, for the first ``len(tokens)`` slots.

        A slot with nothing to decode takes any token at position 0, which the
        next ``place`` overwrites. Returns each slot's float32 logits of the
        next token, written into ``out`` when given (a reused buffer: a fresh
        one costs more in page faults than the conversion itself). The matrix
        multiplies run on whole tiles, zero rows filling the last one;
        attention runs on the given rows only.
        """
        count = tokens.shape[0]
        if not 0 < count <= self.slots:
            raise ValueError(f"a step takes 1 to {self.slots} rows, not {count}")
        rows = -(-count // (self.rows_per_tile or 1)) * (self.rows_per_tile or 1)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        group = self.heads // self.kv_heads
        self._hold((int(positions.max()) // ATTENTION_CHUNK + 1) * ATTENTION_CHUNK)
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        hidden = self._pad_rows(F.embedding(tokens, self.embed))
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(self._norm(hidden, layer.input_norm))[:count]
            qk = self._rotate(qkv[:, :q_size + kv_size].view(count, self.heads + self.kv_heads, self.head_dim), cos, sin)
            # Grouped-query attention as `group` queries per KV head: each KV head is read once. The
            # kernel writes the new key and value into the cache, then reads each row's own positions.
            attended = decode_attention(qk[:, :self.heads].view(count, self.kv_heads, group, self.head_dim),
                                        self.head_dim ** -0.5, qk[:, self.heads:],
                                        qkv[:, q_size + kv_size:].view(count, self.kv_heads, self.head_dim),
                                        self.keys[index], self.values[index], positions)
            hidden = hidden + layer.output(self._pad_rows(attended.reshape(count, q_size)))
            hidden = hidden + self._mlp(self._norm(hidden, layer.post_norm), layer)
        logits = self._logits(hidden)[:count]
        return logits.float() if out is None else out.copy_(logits)
