"""The hf backend's sampler chain: llama.cpp's samplers, in the setting's order, on torch tensors.

transformers has none of XTC, top-n-sigma, DRY or dynamic temperature, and
applies its warpers in a fixed order; so the chain is built here from
``experiments.samplers.chain(sampling)``, each sampler a small function that
does what llama.cpp's does (``src/llama-sampler.cpp`` of the llama.cpp that
llama-cpp-python 0.3.36 vendors; cited per function). Top-p, min-p and
typical-p are transformers' own warpers, which compute the same sets.

llama.cpp works on an array of candidates that truncating samplers shrink
(top-k, top-p, min-p, typical, XTC), while top-n-sigma sets a logit to -inf
and leaves the token in the array. Dynamic temperature's maximum entropy and
top-k's count depend on that difference, so the state carries ``masked``,
the tokens of -inf logit still in llama.cpp's array (None while there are
none: the common case costs nothing).

Every function works on a tile of rows at once; a row's numbers depend only
on that row (its logits, its history and its own random draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from experiments import samplers
from experiments.config import SamplingConfig

# Python's float is a C double; llama.cpp's FLOAT_MAX_LOG (log of FLT_MAX) caps DRY's exponent.
FLOAT_MAX_LOG = 88.7228391
LOWEST_FLOAT32 = torch.finfo(torch.float32).min


@dataclass
class ChainState:
    """Scores of each row's columns (-inf: not a candidate), the columns of -inf score that are
    still in llama.cpp's array (None: none), and the vocabulary id of each column (None: column j
    is token j)."""

    scores: torch.Tensor
    masked: Optional[torch.Tensor] = None
    candidates: Optional[torch.Tensor] = None
    # No -inf score anywhere (the model's logits, before any truncation): lets samplers skip the
    # passes that find the finite scores.
    finite: bool = False

    @property
    def present(self) -> torch.Tensor:
        """llama.cpp's array as a mask."""
        finite = torch.isfinite(self.scores)
        return finite if self.masked is None else finite | self.masked

    def array_size(self) -> torch.Tensor:
        """[rows, 1]: how many candidates llama.cpp's array holds."""
        if self.finite and self.masked is None:
            return torch.full((self.scores.shape[0], 1), self.scores.shape[1])
        return self.present.sum(dim=1, keepdim=True)

    def with_scores(self, scores: torch.Tensor) -> "ChainState":
        """New scores for the same array (a penalty or a temperature: -inf stays -inf)."""
        return ChainState(scores, self.masked, self.candidates, self.finite)

    def token_ids(self) -> torch.Tensor:
        if self.candidates is not None:
            return self.candidates
        return torch.arange(self.scores.shape[1]).expand_as(self.scores)

    def remove(self, removed: torch.Tensor) -> "ChainState":
        """Truncate: the columns leave the array."""
        masked = None if self.masked is None else self.masked & ~removed
        return ChainState(self.scores.masked_fill(removed, -math.inf), masked, self.candidates)

    def for_columns(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` given per vocabulary token, read for this state's columns."""
        return values if self.candidates is None else values.gather(1, self.candidates)


# --- penalties -----------------------------------------------------------------------------------

def token_counts(window: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Occurrences of each vocabulary token in each row of ``window`` (-1 pads count for nothing)."""
    return torch.zeros((window.shape[0], vocab_size), dtype=dtype).scatter_add_(
        1, window.clamp(min=0), (window >= 0).to(dtype))


def apply_penalties(scores, window, repetition: Optional[float], presence: Optional[float],
                    frequency: Optional[float], counts: Optional[torch.Tensor] = None):
    """Penalise tokens seen in ``window`` (the recently generated tokens; -1 pads a row).

    llama_sampler_penalties_apply: repetition is multiplicative (CTRL; divide
    positive logits, multiply the others), presence and frequency additive
    (OpenAI); only generated tokens count, as in llama.cpp's sampler. Written
    by hand because transformers has no presence/frequency penalty and its
    repetition penalty also counts the prompt. ``counts``: the window's token
    counts for ``scores``' columns, when these are not the whole vocabulary.
    """
    if counts is None:
        counts = token_counts(window, scores.shape[1], scores.dtype)
    seen = counts > 0
    if repetition is not None and repetition != 1:
        penalised = torch.where(scores > 0, scores / repetition, scores * repetition)
        scores = torch.where(seen, penalised, scores)
    if frequency:
        scores = scores - counts * frequency
    if presence:
        scores = scores - seen.to(scores.dtype) * presence
    return scores


# --- DRY -----------------------------------------------------------------------------------------

def dry_breaker_table(breakers: Sequence[str], token_pieces: Sequence[bytes],
                      tokenize: Callable[[str], list[int]]) -> dict[int, list[tuple[int, ...]]]:
    """Restart sequences: head token -> the token sequences that must follow it (empty: the head alone).

    get_overlapping_token_sequences (llama.cpp, from koboldcpp PR 982): a
    token whose text contains a breaker is a whole breaker; a token whose text
    ends with the start of a breaker is its head, followed by the tokens of the
    rest (at most DRY_MAX_TAIL_TOKENS). Breakers are compared as UTF-8 bytes.
    """
    table: dict[int, list[tuple[int, ...]]] = {}
    for breaker in breakers:
        text = breaker.encode("utf-8")[:samplers.DRY_MAX_BREAKER_BYTES]
        for token, word in enumerate(token_pieces):
            if text in word:
                table.setdefault(token, [])
                if () not in table[token]:
                    table[token].append(())
                continue
            position = word.find(text[:1])
            while position != -1:
                matched = word[position:] == text[:len(word) - position]
                if matched:
                    # The part of the breaker after the end of this token.
                    rest = text[len(word) - position:].decode("utf-8", errors="replace")
                    tail = tuple(tokenize(rest)[:samplers.DRY_MAX_TAIL_TOKENS])
                    sequences = table.setdefault(token, [])
                    if tail not in sequences:
                        sequences.append(tail)
                position = word.find(text[:1], position + 1)
    return table


@dataclass(frozen=True)
class DryTables:
    """The breaker table as tensors: single-token breakers, and the multi-token ones to match."""

    single: torch.Tensor  # bool per vocabulary token: a breaker by itself
    sequences: tuple[tuple[int, tuple[int, ...]], ...]  # (head, tail) with a non-empty tail

    @classmethod
    def build(cls, table: dict[int, list[tuple[int, ...]]], vocab_size: int) -> "DryTables":
        single = torch.zeros(vocab_size, dtype=torch.bool)
        sequences = []
        for head, tails in table.items():
            for tail in tails:
                if tail:
                    sequences.append((head, tail))
                elif head < vocab_size:
                    single[head] = True
        return cls(single, tuple(sequences))


def dry_penalties(history: torch.Tensor, dry: samplers.Dry, tables: DryTables, vocab_size: int) -> torch.Tensor:
    """DRY's penalty of each vocabulary token for each row (llama_sampler_dry_apply), float32.

    ``history``: each row's generated tokens, left-padded with -1 (the last
    column is the latest token). llama.cpp finds, for every earlier position,
    how long the text ending there matches the text ending now (a reverse
    Z-algorithm, capped at the tokens since the last sequence breaker); the
    token that followed that position would extend the repetition, and is
    penalised by multiplier * base^(length - allowed_length). Here the match
    lengths of all shifts are computed at once on the tile, with a loop only
    over the length of the longest match.
    """
    rows, width = history.shape
    penalty = torch.zeros((rows, vocab_size), dtype=torch.float32)
    lengths = (history >= 0).sum(dim=1)
    limit = width if dry.penalty_last_n == -1 else dry.penalty_last_n
    window = torch.clamp(lengths, max=limit)  # llama.cpp's last_n_repeat
    if width < 2 or int(window.max()) <= dry.allowed_length:
        return penalty
    rep_limit = _tokens_since_breaker(history, window, tables)
    # matches[r, k-1]: the length of the match between the text ending now and the text ending k tokens earlier.
    shifts = torch.arange(1, width)
    matches = torch.zeros((rows, width - 1), dtype=torch.long)
    alive = torch.ones((rows, width - 1), dtype=torch.bool)
    for m in range(width - 1):
        source = width - 1 - m  # the m-th token from the end
        earlier = source - shifts
        inside = (earlier >= 0)[None, :] & (m + shifts[None, :] < window[:, None])
        same = torch.zeros_like(alive)
        if inside.any():
            same = inside & (history[:, source:source + 1] == history[:, earlier.clamp(min=0)]) & (
                history[:, source:source + 1] >= 0)
        alive &= same
        if not alive.any():
            break
        matches += alive
    counts = torch.minimum(matches, rep_limit[:, None])
    # The token after the earlier occurrence: k - 1 tokens from the end (only shifts inside the window).
    qualifies = (counts >= dry.allowed_length) & (shifts[None, :] < window[:, None]) & (
        (rep_limit >= dry.allowed_length)[:, None]) & (window > dry.allowed_length)[:, None]
    if not qualifies.any():
        return penalty
    following = history[:, (width - shifts).clamp(max=width - 1)]
    max_exponent = 0
    if dry.base > 1.000001:
        max_exponent = int(_float32(FLOAT_MAX_LOG) / _float32(math.log(_float32(dry.base))))
    exponent = counts - dry.allowed_length
    if max_exponent > 0:
        exponent = exponent.clamp(max=max_exponent)
    # float multiplier * double pow, stored as a float: llama.cpp's arithmetic.
    values = (_float32(dry.multiplier) * torch.pow(torch.tensor(_float32(dry.base), dtype=torch.float64),
                                                   exponent.double())).float()
    values = torch.where(qualifies, values, torch.zeros_like(values))
    penalty.scatter_reduce_(1, following.clamp(min=0), values, reduce="amax")
    penalty[:, tables.single] = 0.0
    return penalty


def _tokens_since_breaker(history: torch.Tensor, window: torch.Tensor, tables: DryTables) -> torch.Tensor:
    """Per row, the tokens after the most recent restart sequence inside the window (the window if none)."""
    rows, width = history.shape
    from_end = torch.arange(width - 1, -1, -1)  # i: how many tokens from the end each column is
    inside = from_end[None, :] < window[:, None]
    # For each column, the length of the longest restart sequence whose head is there (-1: none).
    longest = torch.where(tables.single[history.clamp(min=0)] & (history >= 0), 0, -1)
    for head, tail in tables.sequences:
        ends = history == head
        for offset, token in enumerate(tail):
            shifted = torch.full_like(history, -2)
            shifted[:, :width - offset - 1] = history[:, offset + 1:]
            ends &= shifted == token
        longest = torch.where(ends & (from_end[None, :] >= len(tail)), torch.clamp(longest, min=len(tail)), longest)
    found = (longest >= 0) & inside
    # The nearest such column: the largest column index with a match.
    column = torch.where(found, torch.arange(width)[None, :], -1).max(dim=1).values
    nearest_from_end = width - 1 - column.clamp(min=0)
    limit = nearest_from_end - longest.gather(1, column.clamp(min=0)[:, None])[:, 0]
    return torch.where(column >= 0, limit, window)


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


# --- top-n-sigma, XTC, temperature ----------------------------------------------------------------

def top_n_sigma(state: ChainState, n: float) -> ChainState:
    """Tang et al. 2024, llama_sampler_top_n_sigma_apply: keep logits >= max - n * std over the
    finite ones (population std); the others become -inf but stay in the array. Equal logits: std 0,
    all kept. Sums are torch's (pairwise), llama.cpp's sequential: both float32."""
    if state.scores.shape[1] <= 1:
        return state
    scores = state.scores
    if state.finite:
        mean = scores.mean(dim=1, keepdim=True)
        variance = ((scores - mean) ** 2).mean(dim=1, keepdim=True)
        finite = None
    else:
        finite = torch.isfinite(scores)
        count = finite.sum(dim=1, keepdim=True).clamp(min=1)
        mean = torch.where(finite, scores, 0.0).sum(dim=1, keepdim=True) / count
        variance = torch.where(finite, (scores - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / count
    below = scores < scores.amax(dim=1, keepdim=True) - n * variance.sqrt()
    if finite is not None:
        below &= finite
    masked = below if state.masked is None else state.masked | below
    return ChainState(state.scores.masked_fill(below, -math.inf), masked, state.candidates, False)


def xtc(state: ChainState, xtc_: samplers.Xtc, coins: torch.Tensor) -> ChainState:
    """Exclude Top Choices (text-generation-webui PR 6335; llama_sample_xtc_apply): with probability
    ``xtc.probability`` per token (the row's coin <= it), every candidate whose probability is at least
    the threshold is removed except the least likely of them; nothing happens with fewer than two.
    A threshold of 0 keeps the least likely candidate of probability > 0 (llama.cpp would keep a token
    of probability 0 there and draw from nothing)."""
    cut = coins <= xtc_.probability
    if not cut.any():
        return state
    scores = state.scores
    # At most 1/threshold candidates can have a probability >= threshold: look at those only.
    width = scores.shape[1]
    k = width if xtc_.threshold <= 0 else min(width, int(1 / xtc_.threshold))
    top, columns = scores.topk(k, dim=1)
    probs = torch.exp(top - torch.logsumexp(scores, dim=1, keepdim=True))
    above = (probs >= xtc_.threshold) & (probs > 0)
    count = above.sum(dim=1, keepdim=True)
    # The top choices, sorted: all of those above the threshold but the last (the least likely).
    removed = (torch.arange(k)[None, :] < count - 1) & (count >= 2) & cut[:, None]
    if not removed.any():
        return state
    scores = scores.scatter(1, columns, torch.where(removed, -math.inf, top))
    return ChainState(scores, state.masked, state.candidates, False)


def temperature(state: ChainState, value: float, dynatemp: Optional[samplers.Dynatemp]) -> ChainState:
    """llama_sampler_temp_apply / llama_sampler_temp_ext_apply (dynamic temperature, kalomaze): with
    a range, each row's temperature is T - range + 2 * range * (H / log(n)) ** exponent (the lower end
    clamped at 0), H the entropy of the row's distribution over its n candidates (those in the array,
    -inf ones included, as llama.cpp counts them). A temperature <= 0 keeps only the largest logit."""
    if dynatemp is None:
        # Divided by the Python number, as transformers' TemperatureLogitsWarper does (the stories of
        # earlier versions keep their bits).
        return state.with_scores(state.scores / value)
    size = state.array_size()
    low, high = max(0.0, value - dynatemp.range), value + dynatemp.range
    entropy = _entropy(state.scores, state.finite)
    maximum = torch.log(size.clamp(min=2).float())
    dynamic = low + (high - low) * torch.pow(entropy / maximum, dynatemp.exponent)
    # One candidate or none: llama.cpp leaves the row as it is.
    dynamic = torch.where(size <= 1, 1.0, dynamic)
    return _divide(state, dynamic)


def _entropy(scores: torch.Tensor, finite: bool) -> torch.Tensor:
    """[rows, 1] entropy (nats) of softmax(scores): log Z - sum p * s where every score is finite
    (two cheap passes), else -sum p log p with 0 log 0 = 0."""
    if finite:
        log_z = torch.logsumexp(scores, dim=1, keepdim=True)
        return log_z - (torch.exp(scores - log_z) * scores).sum(dim=1, keepdim=True)
    return torch.special.entr(torch.softmax(scores, dim=1)).sum(dim=1, keepdim=True)


def _divide(state: ChainState, temperatures: torch.Tensor) -> ChainState:
    greedy = temperatures <= 0
    scores = state.scores / torch.where(greedy, 1.0, temperatures)
    if greedy.any():
        best = scores.argmax(dim=1, keepdim=True)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, best, True)
        dropped = greedy & ~keep & torch.isfinite(scores)  # -inf, still in the array
        scores = scores.masked_fill(dropped, -math.inf)
        return ChainState(scores, dropped if state.masked is None else state.masked | dropped, state.candidates, False)
    return state.with_scores(scores)


def top_k(state: ChainState, k: int) -> ChainState:
    """llama_sampler_top_k_impl: the k highest of the array, as a gather (later samplers and the draw
    then work on k columns, not the vocabulary). A -inf token still in the array outranks one already
    removed, as in llama.cpp, where the removed one is gone."""
    k = min(k, state.scores.shape[1])
    key = state.scores if state.masked is None else state.scores.masked_fill(state.masked, LOWEST_FLOAT32)
    columns = key.topk(k, dim=1).indices
    candidates = columns if state.candidates is None else state.candidates.gather(1, columns)
    masked = None if state.masked is None else state.masked.gather(1, columns)
    return ChainState(state.scores.gather(1, columns), masked, candidates, state.finite)


def _transformers_warper(warper) -> Callable[[ChainState], ChainState]:
    """A transformers warper as a truncation: the columns it sets to -inf leave the array, and so do
    the -inf ones (llama.cpp's top-p and typical cut them: probability 0)."""
    def apply(state: ChainState) -> ChainState:
        return ChainState(warper(None, state.scores), None, state.candidates)
    return apply


# --- the chain -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Draws:
    """Each row's random numbers for this token, from the story's own generator."""

    token: Optional[torch.Tensor]  # the draw of the token (None: greedy)
    xtc: Optional[torch.Tensor] = None  # XTC's coin


def needs_history(sampling: SamplingConfig) -> bool:
    """Whether the chain reads each row's generated tokens (penalties, DRY)."""
    return bool({"penalties", "dry"} & set(samplers.chain(sampling)))


def draws_per_token(sampling: SamplingConfig) -> int:
    """Random numbers each row draws per token: the token's (none when greedy), and XTC's coin."""
    return (1 if sampling.temperature != 0 else 0) + (1 if "xtc" in samplers.chain(sampling) else 0)


def draw_uniforms(generators: Sequence[torch.Generator], count: int) -> Optional[torch.Tensor]:
    """[rows] (one draw each, as before XTC existed) or [rows, count] float64 uniforms, None for none."""
    if count == 0:
        return None
    if count == 1:
        return torch.stack([torch.rand((), generator=generator, dtype=torch.float64) for generator in generators])
    return torch.stack([torch.rand((count,), generator=generator, dtype=torch.float64) for generator in generators])


class SamplerChain:
    """``chain(history, logits, draws) -> ChainState`` for one setting.

    ``history``: each row's generated tokens left-padded with -1 (None when
    neither penalties nor DRY run). ``dry_tables`` is needed when DRY runs
    (``dry_tables_for``: it depends on the tokenizer).
    """

    def __init__(self, sampling: SamplingConfig, vocab_size: int, dry_tables: Optional[DryTables] = None):
        from transformers import MinPLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper

        self.sampling, self.vocab_size = sampling, vocab_size
        self.names = samplers.chain(sampling)
        self.xtc = samplers.xtc(sampling)
        self.dry = samplers.dry(sampling)
        self.dynatemp = samplers.dynatemp(sampling)
        if self.dry is not None and dry_tables is None:
            raise ValueError("a chain with DRY needs its breaker tables (dry_tables_for)")
        self.dry_tables = dry_tables
        self.bias, self.finite_bias = None, True
        if sampling.logit_bias:
            self.bias = torch.zeros(vocab_size)
            for token, value in sampling.logit_bias.items():
                if int(token) >= vocab_size:
                    raise ValueError(f"sampling.logit_bias: token id {token} is outside the vocabulary "
                                     f"(size {vocab_size})")
                self.bias[int(token)] = float(value)
            self.finite_bias = bool(torch.isfinite(self.bias).all())
        self.warpers = {
            "typical_p": _transformers_warper(TypicalLogitsWarper(sampling.typical_p)) if "typical_p" in self.names else None,
            "top_p": _transformers_warper(TopPLogitsWarper(sampling.top_p)) if "top_p" in self.names else None,
            "min_p": _transformers_warper(MinPLogitsWarper(sampling.min_p)) if "min_p" in self.names else None,
        }

    @property
    def draws_per_token(self) -> int:
        return draws_per_token(self.sampling)

    def split_draws(self, uniforms: Optional[torch.Tensor]) -> Draws:
        """``uniforms`` [rows, draws_per_token] as named draws."""
        if uniforms is None:
            return Draws(None)
        uniforms = uniforms.reshape(uniforms.shape[0], -1)
        token = uniforms[:, 0].contiguous() if self.sampling.temperature != 0 else None
        coin = uniforms[:, -1].contiguous() if "xtc" in self.names else None
        return Draws(token, coin)

    def __call__(self, history: Optional[torch.Tensor], logits: torch.Tensor, draws: Draws) -> ChainState:
        # The model's logits are finite; a bias may not be.
        state = ChainState(logits if self.bias is None else logits + self.bias, finite=self.finite_bias)
        for name in self.names:
            state = self._apply(name, state, history, draws)
        return state

    def _apply(self, name: str, state: ChainState, history, draws: Draws) -> ChainState:
        sampling = self.sampling
        if name == "penalties":
            if history is None or history.shape[1] == 0:
                return state
            n = sampling.repeat_last_n
            window = history if not n or n < 0 else history[:, -n:]
            counts = token_counts(window, self.vocab_size, state.scores.dtype)
            scores = apply_penalties(state.scores, window, sampling.repetition_penalty, sampling.presence_penalty,
                                     sampling.frequency_penalty, counts=state.for_columns(counts))
            return state.with_scores(scores)
        if name == "dry":
            if history is None or history.shape[1] == 0:
                return state
            penalty = dry_penalties(history, self.dry, self.dry_tables, self.vocab_size)
            return state.with_scores(state.scores - state.for_columns(penalty))
        if name == "top_n_sigma":
            return top_n_sigma(state, sampling.top_n_sigma)
        if name == "top_k":
            return top_k(state, sampling.top_k)
        if name in self.warpers:
            return self.warpers[name](state)
        if name == "xtc":
            return xtc(state, self.xtc, draws.xtc)
        if name == "temperature":
            if sampling.temperature == 0:
                return state  # greedy: the choice is the argmax of what the chain kept
            return temperature(state, sampling.temperature, self.dynatemp)
        raise ValueError(f"unknown sampler {name!r}")


def dry_tables_for(sampling: SamplingConfig, tokenizer, vocab_size: int) -> Optional[DryTables]:
    """The DRY breaker tables of a setting for a transformers tokenizer (None when DRY is off)."""
    dry = samplers.dry(sampling)
    if dry is None:
        return None
    pieces = token_pieces(tokenizer, vocab_size)
    table = dry_breaker_table(dry.sequence_breakers, pieces,
                              lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    return DryTables.build(table, vocab_size)


def token_pieces(tokenizer, vocab_size: int) -> list[bytes]:
    """Each token's text as UTF-8 bytes, as llama.cpp's token_to_piece gives it (special tokens as text).

    Byte-level BPE tokens (GPT-2, SmolLM2, Llama 3) are mapped back to their
    bytes; SentencePiece tokens get their spaces and byte tokens back.
    """
    # GPT-2's byte-to-character map (transformers 5 keeps it in convert_slow_tokenizer, not a public API).
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {character: byte for byte, character in bytes_to_unicode().items()}
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    byte_level = sum(1 for token in tokens if token and token[0] == "\u0120") > sum(
        1 for token in tokens if token and token[0] == "\u2581")
    pieces = []
    for token in tokens:
        token = token or ""
        if byte_level and all(character in byte_of for character in token):
            pieces.append(bytes(byte_of[character] for character in token))
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            pieces.append(bytes([int(token[3:5], 16)]))
        else:
            pieces.append(token.replace("\u2581", " ").encode("utf-8"))
    return pieces


# --- choosing the token ----------------------------------------------------------------------------

def choose_tokens(chain: SamplerChain, history, logits, uniforms, diagnostics: bool = False):
    """(token ids, their log-probs under the untempered, unpenalised model[, entropy before, entropy
    after, candidates kept]) for each row.

    The stored log-prob is the raw model's, as llama.cpp and OpenAI report it.
    """
    draws = chain.split_draws(uniforms)
    state = chain(history, logits, draws)
    scores, candidates = state.scores, state.candidates
    probs = None
    if draws.token is None:
        choice = scores.argmax(dim=-1)
    else:
        probs = torch.softmax(scores, dim=-1)
        choice = sample_by_inverse_cdf(probs, draws.token)
    tokens = choice if candidates is None else candidates.gather(1, choice[:, None])[:, 0]
    total = torch.logsumexp(logits, dim=-1)
    token_logprobs = logits.gather(1, tokens[:, None])[:, 0] - total
    if not diagnostics:
        return tokens, token_logprobs
    # H = log Z - sum p * logit, with p from the same log Z.
    before = total - (torch.exp(logits - total[:, None]) * logits).sum(dim=-1)
    if probs is None:  # greedy: the token was certain
        after, kept = torch.zeros_like(before), torch.ones_like(tokens)
    else:
        after, kept = torch.special.entr(probs).sum(dim=-1), (probs > 0).sum(dim=-1)
    return tokens, token_logprobs, before, after, kept


def sample_by_inverse_cdf(probs, uniforms):
    """One token per row: the first index whose cumulative probability exceeds the row's uniform draw.

    Each row's draw comes from that story's own generator, so the choice is
    the story's alone; the search itself is one vectorised pass over the
    batch, much cheaper than ``torch.multinomial`` row by row on a large
    vocabulary. Tokens of probability zero are never chosen (``right=True``).
    """
    cdf = probs.double().cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:]
    tokens = torch.searchsorted(cdf, uniforms[:, None], right=True)[:, 0]
    return tokens.clamp(max=probs.shape[-1] - 1)
