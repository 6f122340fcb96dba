"""llama.cpp's own sampler chain for one setting, built from its low-level API.

llama-cpp-python's ``Llama.generate`` builds a fixed chain (penalties, top-k,
typical, top-p, min-p, temperature) with none of XTC, top-n-sigma, DRY or
dynamic temperature, and no order. This module builds the chain a setting asks
for, in the order of :func:`experiments.samplers.chain`, from llama.cpp's
sampler constructors (``llama_sampler_init_*``, ``src/llama-sampler.cpp``):

    logit bias, grammar, then each sampler in order, then the draw:
    ``dist(seed)``, or ``greedy`` at temperature 0.

Logit bias runs first, as in llama.cpp's common sampler. Grammar comes next;
it commutes with the penalties (a rejected token's -inf stays -inf under them).
At temperature 0 the "temperature" stage is skipped and greedy takes the
argmax of what the chain kept, as the hf backend does. Mirostat keeps
llama-cpp-python's chain exactly (bias, penalties, grammar, Mirostat), so
stories made before this chain existed are unchanged.

One token is sampled exactly as ``llama_sampler_sample`` does it, but from a
candidate buffer allocated once per chain: converting a fresh vocabulary-sized
array per token cost 2.26 ms against 0.27 ms for writing into a reused one
(issue 14's benchmark).
"""

from __future__ import annotations

import ctypes
from typing import Optional, Sequence

import numpy as np

from experiments import samplers
from experiments.config import ConfigError, SamplingConfig

# llama.cpp's defaults for the penalty window and Mirostat, used when a setting leaves them unset.
DEFAULT_REPEAT_LAST_N = 64
DEFAULT_MIROSTAT_TAU = 5.0
DEFAULT_MIROSTAT_ETA = 0.1
MIROSTAT_M = 100  # llama-cpp-python's m for Mirostat 1 (tokens used to estimate s_hat)
# Samplers that truncate keep at least one candidate (0 and 1 behave the same in llama.cpp's code).
MIN_KEEP = 1

# llama_token_data {int32 id; float logit; float p}, laid out as the C struct.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def schema_grammar(json_schema: str) -> str:
    """The GBNF grammar of a JSON Schema, by llama.cpp's own converter (the one its servers use)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json_schema)
    except Exception as error:  # the converter raises bare Exceptions and ValueErrors for what it cannot take
        raise ConfigError(f"sampling.json_schema cannot be turned into a llama.cpp grammar ({error}); "
                          "use the subset of JSON Schema llama.cpp supports") from None


def _window(last_n: int, whole: int) -> int:
    """A penalty window as the constructors take it: llama_sampler_init_penalties and _dry clamp a
    negative window to 0, which turns them off, so -1 (the whole story) becomes ``whole``."""
    return whole if last_n == -1 else last_n


class SamplerChain:
    """One story's sampler chain and the candidate buffer it samples from; ``close()`` frees it.

    ``whole_window`` is what a penalty window of -1 means (the context size when generating).
    With ``draw=False`` the chain stops before dist/greedy: :meth:`apply` then leaves the kept
    candidates and their final logits in :meth:`kept`.
    """

    def __init__(self, sampling: SamplingConfig, vocab: int, seed: int, whole_window: int,
                 n_candidates: Optional[int] = None, draw: bool = True):
        import llama_cpp

        self._lib = llama_cpp
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        n_candidates = n_vocab if n_candidates is None else n_candidates
        assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)
        self.greedy = draw and sampling.temperature == 0
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            self._add_stages(sampling, vocab, n_vocab, seed, whole_window, draw)
        except BaseException:
            self.close()
            raise
        self._candidates = np.zeros(n_candidates, dtype=TOKEN_DATA)
        self._ids = np.arange(n_candidates, dtype=np.int32)
        self._address = self._candidates.ctypes.data
        self._data = ctypes.cast(self._address, ctypes.POINTER(llama_cpp.llama_token_data))
        self._array = llama_cpp.llama_token_data_array(data=self._data, size=n_candidates, selected=-1, sorted=False)

    # -- building ---------------------------------------------------------------------------------

    def _add(self, sampler, what: str) -> None:
        if not sampler:
            raise ConfigError(f"{what}: llama.cpp refused it (see its log above)")
        self._lib.llama_sampler_chain_add(self._chain, sampler)

    def _add_stages(self, sampling: SamplingConfig, vocab: int, n_vocab: int, seed: int, whole_window: int,
                    draw: bool) -> None:
        lib = self._lib
        if sampling.logit_bias:
            self._add(self._logit_bias(sampling.logit_bias, n_vocab), "sampling.logit_bias")
        if sampling.mirostat_mode:
            # llama-cpp-python's Mirostat chain, unchanged: it ignores temperature and truncation.
            self._add_penalties(sampling, n_vocab, whole_window)
            self._add_grammar(sampling, vocab)
            if not draw:
                raise ValueError("a Mirostat chain draws inside Mirostat; it cannot stop before the draw")
            if self.greedy:
                self._add(lib.llama_sampler_init_greedy(), "greedy")
            elif sampling.mirostat_mode == 1:
                self._add(lib.llama_sampler_init_mirostat(n_vocab, seed, sampling.mirostat_tau or DEFAULT_MIROSTAT_TAU,
                                                          sampling.mirostat_eta or DEFAULT_MIROSTAT_ETA, MIROSTAT_M),
                          "sampling.mirostat_mode=1")
            else:
                self._add(lib.llama_sampler_init_mirostat_v2(seed, sampling.mirostat_tau or DEFAULT_MIROSTAT_TAU,
                                                             sampling.mirostat_eta or DEFAULT_MIROSTAT_ETA),
                          "sampling.mirostat_mode=2")
            return
        self._add_grammar(sampling, vocab)
        for name in samplers.chain(sampling):
            if name == "penalties":
                self._add_penalties(sampling, n_vocab, whole_window)
            elif name == "dry":
                self._add_dry(sampling, vocab, whole_window)
            elif name == "top_n_sigma":
                self._add(lib.llama_sampler_init_top_n_sigma(sampling.top_n_sigma), "sampling.top_n_sigma")
            elif name == "top_k":
                self._add(lib.llama_sampler_init_top_k(sampling.top_k), "sampling.top_k")
            elif name == "typical_p":
                self._add(lib.llama_sampler_init_typical(sampling.typical_p, MIN_KEEP), "sampling.typical_p")
            elif name == "top_p":
                self._add(lib.llama_sampler_init_top_p(sampling.top_p, MIN_KEEP), "sampling.top_p")
            elif name == "min_p":
                self._add(lib.llama_sampler_init_min_p(sampling.min_p, MIN_KEEP), "sampling.min_p")
            elif name == "xtc":
                xtc = samplers.xtc(sampling)
                self._add(lib.llama_sampler_init_xtc(xtc.probability, xtc.threshold, MIN_KEEP, seed),
                          "sampling.xtc_probability")
            elif name == "temperature":
                self._add_temperature(sampling)
            else:
                raise ValueError(f"no llama.cpp sampler for {name!r}")  # samplers.SAMPLER_NAMES grew
        if draw:
            self._add(lib.llama_sampler_init_greedy() if self.greedy else lib.llama_sampler_init_dist(seed), "draw")

    def _logit_bias(self, logit_bias: dict, n_vocab: int):
        biases = (self._lib.llama_logit_bias * len(logit_bias))()
        for entry, (token, value) in zip(biases, logit_bias.items()):
            if not 0 <= int(token) < n_vocab:
                raise ConfigError(f"sampling.logit_bias: token id {token} is outside the vocabulary (size {n_vocab})")
            entry.token, entry.bias = int(token), float(value)
        return self._lib.llama_sampler_init_logit_bias(n_vocab, len(logit_bias), biases)

    def _add_grammar(self, sampling: SamplingConfig, vocab: int) -> None:
        if sampling.grammar is not None:
            self._add(self._lib.llama_sampler_init_grammar(vocab, sampling.grammar.encode("utf-8"), b"root"),
                      f"sampling.grammar={sampling.grammar!r} (GBNF with a 'root' rule)")
        elif sampling.json_schema is not None:
            self._add(self._lib.llama_sampler_init_grammar(vocab, schema_grammar(sampling.json_schema).encode("utf-8"),
                                                           b"root"),
                      f"sampling.json_schema={sampling.json_schema!r} (as converted to GBNF by llama.cpp)")

    def _add_penalties(self, sampling: SamplingConfig, n_vocab: int, whole_window: int) -> None:
        if "penalties" not in samplers.in_use(sampling):
            return
        window = _window(sampling.repeat_last_n if sampling.repeat_last_n is not None else DEFAULT_REPEAT_LAST_N,
                         whole_window)
        repeat = sampling.repetition_penalty if sampling.repetition_penalty is not None else 1.0
        self._add(self._lib.llama_sampler_init_penalties(n_vocab, window, repeat, sampling.frequency_penalty or 0.0,
                                                         sampling.presence_penalty or 0.0), "sampling penalties")

    def _add_dry(self, sampling: SamplingConfig, vocab: int, whole_window: int) -> None:
        dry = samplers.dry(sampling)
        window = _window(dry.penalty_last_n, whole_window)
        # The constructor copies the breakers (and tokenizes them with the vocabulary) before it returns.
        breakers = (ctypes.c_char_p * len(dry.sequence_breakers))(*(b.encode("utf-8") for b in dry.sequence_breakers))
        self._add(self._lib.llama_sampler_init_dry(vocab, dry.multiplier, dry.base, dry.allowed_length, window,
                                                   breakers, len(dry.sequence_breakers)), "sampling.dry_multiplier")

    def _add_temperature(self, sampling: SamplingConfig) -> None:
        if sampling.temperature == 0:
            return  # greedy takes the argmax of what the chain kept
        dynatemp = samplers.dynatemp(sampling)
        if dynatemp is None:
            self._add(self._lib.llama_sampler_init_temp(sampling.temperature), "sampling.temperature")
        else:
            self._add(self._lib.llama_sampler_init_temp_ext(sampling.temperature, dynatemp.range, dynatemp.exponent),
                      "sampling.dynatemp_range")

    # -- sampling ---------------------------------------------------------------------------------

    def apply(self, logits: np.ndarray) -> None:
        """Run the chain on these logits: what llama_sampler_sample does before it reads the token."""
        candidates = self._candidates
        candidates["id"] = self._ids  # rewritten each time: top-k and others sort the buffer in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = self._array
        array.data, array.size, array.selected, array.sorted = self._data, len(candidates), -1, False
        self._lib.llama_sampler_apply(self._chain, ctypes.byref(array))

    def accept(self, token: int) -> None:
        """Tell every sampler the token was generated (penalties, DRY and grammar keep a history)."""
        self._lib.llama_sampler_accept(self._chain, token)

    def sample(self, logits: np.ndarray) -> int:
        """Draw one token from these logits and accept it, exactly as llama_sampler_sample."""
        self.apply(logits)
        selected = self._array.selected
        if not 0 <= selected < self._array.size:
            raise RuntimeError(f"llama.cpp's sampler chain selected candidate {selected} of {self._array.size}")
        token = int(self.kept()["id"][selected])
        self.accept(token)
        return token

    def kept(self) -> np.ndarray:
        """The candidates the last :meth:`apply` left, in the chain's order (a view of the buffer).

        XTC drops the top candidates by moving the array's data pointer, so the start is read back.
        """
        start, misaligned = divmod(ctypes.cast(self._array.data, ctypes.c_void_p).value - self._address,
                                   TOKEN_DATA.itemsize)
        if misaligned or not 0 <= start <= start + self._array.size <= len(self._candidates):
            raise RuntimeError("llama.cpp's sampler chain left its candidates outside the buffer it was given")
        return self._candidates[start:start + self._array.size]

    def drawn_from(self) -> tuple[float, int]:
        """Entropy (nats) and support size of the distribution the last token was drawn from."""
        if self.greedy:
            return 0.0, 1
        p = self.kept()["p"].astype(np.float64)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum()), int(p.size)

    def close(self) -> None:
        if getattr(self, "_chain", None) is not None:
            self._lib.llama_sampler_free(self._chain)  # frees every sampler added to it
            self._chain = None

    def __enter__(self) -> "SamplerChain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def entropy(logits: np.ndarray) -> float:
    """Entropy (nats) of softmax(logits), in float64; -inf logits have probability 0."""
    x = logits.astype(np.float64)
    x = x[x > -np.inf]
    x -= x.max()
    e = np.exp(x)
    total = e.sum()
    return float(np.log(total) - (e * x).sum() / total)


def kept_distribution(vocab: int, sampling: SamplingConfig, seed: int, logits: Sequence[float],
                      history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """What llama.cpp's chain for ``sampling`` keeps of ``logits``, without the final draw.

    ``vocab`` is a ``llama_vocab`` pointer (``Llama(path, vocab_only=True)._model.vocab`` is
    enough; DRY tokenizes its breakers with it). ``logits`` are float32 scores of candidates
    ``0 .. len(logits)-1`` (at most the vocabulary); ``history`` is accepted into the chain first,
    as tokens generated before, for the penalties and DRY (a window of -1 covers all of it).
    ``seed`` seeds XTC's coin.

    Returns the kept candidates' ids, sorted, and their float64 probabilities: the softmax of the
    chain's final logits over the kept candidates whose logit is finite. At temperature 0 the
    temperature stage is skipped (greedy would take the argmax of these). Mirostat draws inside
    its own sampler and is refused.
    """
    if sampling.mirostat_mode:
        raise ValueError(f"sampling.mirostat_mode={sampling.mirostat_mode}: Mirostat draws inside its own sampler, "
                         "so there is no kept distribution before the draw")
    logits = np.asarray(logits, dtype=np.float32)
    with SamplerChain(sampling, vocab, seed, whole_window=len(history) + 1, n_candidates=len(logits),
                      draw=False) as chain:
        for token in history:
            chain.accept(int(token))
        chain.apply(logits)
        kept = chain.kept()
        finite = np.isfinite(kept["logit"])
        ids = kept["id"][finite].copy()
        final = kept["logit"][finite].astype(np.float64)
    order = np.argsort(ids, kind="stable")
    ids, final = ids[order], final[order]
    if not ids.size:
        return ids, final
    probabilities = np.exp(final - final.max())
    return ids, probabilities / probabilities.sum()
