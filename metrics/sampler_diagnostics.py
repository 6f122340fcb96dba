"""What the sampler did to each story, from the per-token diagnostics stored at generation
(``sampler_diagnostics``): ``mean_entropy_before``, ``mean_entropy_after``, ``mean_entropy_cut``
and ``mean_candidates_kept``.

A story generated with ``sampler_diagnostics=true`` carries, aligned with its
``token_logprobs``, per token: the entropy (nats) of the model's untempered
distribution, the entropy of the distribution the token was drawn from (after
the whole chain: truncation, temperature, XTC, ...), and how many candidates
the chain left with probability > 0. Here each becomes its mean over the
story's tokens, so an analysis can ask whether what the sampler cut predicts
ratings. No model is loaded; a story without the record gets NaN, with the
reason in the sidecar.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from metrics.config import MetricName
from metrics.context import MeasureContext, MetricFamily

FIELDS = ("entropy_before", "entropy_after", "candidates_kept")
COLUMNS = ("mean_entropy_before", "mean_entropy_after", "mean_entropy_cut", "mean_candidates_kept")


def record_problem(record: Any) -> Optional[str]:
    """Why a stored ``sampler_diagnostics`` value gives no means, or None if it does."""
    if record is None or (isinstance(record, float) and math.isnan(record)):
        return ("no sampler_diagnostics stored (generated with sampler_diagnostics=false, "
                "or by a backend that cannot record them)")
    if not isinstance(record, Mapping):
        return f"sampler_diagnostics is a {type(record).__name__}, not a mapping of {', '.join(FIELDS)}"
    missing = [name for name in FIELDS if name not in record]
    if missing:
        return f"sampler_diagnostics has no {', '.join(missing)}"
    lengths = set()
    for name in FIELDS:
        value = record[name]
        if not isinstance(value, (list, tuple, np.ndarray)):
            return f"sampler_diagnostics.{name} is a {type(value).__name__}, not a list of numbers"
        try:
            values = np.asarray([math.nan if v is None else v for v in value], dtype=np.float64)
        except (TypeError, ValueError):
            return f"sampler_diagnostics.{name} holds non-numbers"
        if values.ndim != 1:
            return f"sampler_diagnostics.{name} is not a flat list"
        if not np.isfinite(values).all():
            return f"sampler_diagnostics.{name} holds null, NaN or infinite entries"
        if (values < 0).any():
            return f"sampler_diagnostics.{name} holds negative values (entropies and counts are >= 0)"
        lengths.add(len(values))
    if len(lengths) > 1:
        return "sampler_diagnostics' lists differ in length (" + ", ".join(
            f"{name} {len(record[name])}" for name in FIELDS) + ")"
    if lengths == {0}:
        return "sampler_diagnostics is empty (no generated tokens)"
    return None


def story_means(record: Mapping[str, Any]) -> dict[str, float]:
    """The means over a story's tokens of a valid record (``record_problem`` is None):

    mean_entropy_before = (1/N) sum_t H(p_t), p_t the untempered model distribution;
    mean_entropy_after = (1/N) sum_t H(q_t), q_t the distribution the token was drawn from;
    mean_entropy_cut = mean_entropy_before - mean_entropy_after (what the chain took away,
    negative when a temperature above 1 flattened more than truncation cut);
    mean_candidates_kept = (1/N) sum_t |{v : q_t(v) > 0}|.
    """
    before = float(np.mean(np.asarray(record["entropy_before"], dtype=np.float64)))
    after = float(np.mean(np.asarray(record["entropy_after"], dtype=np.float64)))
    kept = float(np.mean(np.asarray(record["candidates_kept"], dtype=np.float64)))
    return {"mean_entropy_before": before, "mean_entropy_after": after, "mean_entropy_cut": before - after,
            "mean_candidates_kept": kept}


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    columns = {name: np.full(context.n, np.nan) for name in COLUMNS}
    source = "sampler_diagnostics stored at generation (one value per generated token)"
    info = {
        "mean_entropy_before": {"formula": "mean over tokens of the entropy (nats) of the untempered model "
                                           "distribution", "source": source},
        "mean_entropy_after": {"formula": "mean over tokens of the entropy (nats) of the distribution the "
                                          "token was drawn from, after the whole sampler chain", "source": source},
        "mean_entropy_cut": {"formula": "mean_entropy_before - mean_entropy_after", "source": source},
        "mean_candidates_kept": {"formula": "mean over tokens of the candidates with probability > 0 after "
                                            "the chain", "source": source},
    }
    records = context.stored_field("sampler_diagnostics")
    if records is None:
        for name in COLUMNS:
            context.nan_log.nan(name, range(context.n), "input has no sampler_diagnostics field")
        return columns, info
    for index, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            for name in COLUMNS:
                context.nan_log.nan(name, [index], problem)
            continue
        for name, value in story_means(record).items():
            columns[name][index] = value
    return columns, info


# Reads only the stored records: no model, no exemplars.
FAMILY = MetricFamily(name=MetricName.sampler_diagnostics, level="story", needs=frozenset(), compute=measure)
