"""Perplexity from the token log-probs stored at generation (``perplexity``).

The log-probs are those of the untempered model for each generated token, as
the backend reported them, so no model is loaded here.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from metrics.config import MetricName
from metrics.context import MeasureContext, MetricFamily


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens): perplexity from a summed negative log-likelihood (nats).

    NaN when there are no tokens.
    """
    if n_tokens <= 0:
        return math.nan
    return math.exp(total_nll / n_tokens)


def perplexity_from_logprobs(token_logprobs: Sequence[float]) -> float:
    """PPL = exp(-(1/N) * sum_i log p(x_i | x_<i)) over the N generated tokens.

    Natural-log probabilities. NaN for an empty list; +inf when a token had
    probability 0 (log-prob -inf).
    """
    values = np.asarray(token_logprobs, dtype=np.float64)
    if values.size == 0:
        return math.nan
    return perplexity_from_nll(float(-values.sum()), int(values.size))


def _logprob_problem(value: Any) -> Optional[str]:
    """Why a stored token_logprobs value cannot give a perplexity, or None if it can."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no token_logprobs stored (the backend could not give them)"
    if not isinstance(value, (list, tuple, np.ndarray)):
        return f"token_logprobs is a {type(value).__name__}, not a list of numbers"
    if len(value) == 0:
        return "token_logprobs is empty (no generated tokens)"
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return "token_logprobs holds non-numbers"
    if values.ndim != 1:
        return "token_logprobs is not a flat list"
    if np.isnan(values).any():
        return "token_logprobs holds null/NaN entries"
    if (values > 1e-6).any():
        return "token_logprobs holds values > 0 (not log-probabilities)"
    return None


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    values = np.full(context.n, np.nan)
    info = {"perplexity": {
        "formula": "exp(-mean(token_logprobs)) over the generated tokens",
        "source": "token_logprobs stored at generation (untempered model)",
    }}
    if context.token_logprobs is None:
        context.nan_log.nan("perplexity", range(context.n), "input has no token_logprobs field")
        return {"perplexity": values}, info
    for index, stored in enumerate(context.token_logprobs):
        problem = _logprob_problem(stored)
        if problem:
            context.nan_log.nan("perplexity", [index], problem)
            continue
        values[index] = perplexity_from_logprobs(stored)
    return {"perplexity": values}, info


# Reads only the stored log-probs: no model, no exemplars.
FAMILY = MetricFamily(name=MetricName.perplexity, level="story", needs=frozenset(), compute=measure)
