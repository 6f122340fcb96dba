"""Cosine similarity of story embeddings to the prototype and to the exemplar set.

Columns: ``prototype_cos_sim`` (the paper's measure), ``exemplar_cos_sim_max``
(similarity to the nearest exemplar) and ``exemplar_cos_sim_mean``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metrics.config import MetricName
from metrics.context import MeasureContext, MetricFamily, Need


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) = a . b / (|a| |b|); NaN when either vector is zero or not finite."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if not np.isfinite(norms) or norms == 0:
        return math.nan
    return float(np.dot(a, b) / norms)


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """S[i, j] = cos(a_i, b_j) for the rows of two matrices; NaN where a row is zero or not finite."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norm_a = np.linalg.norm(a, axis=1, keepdims=True)
    norm_b = np.linalg.norm(b, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_unit = np.where(norm_a > 0, a / norm_a, np.nan)
        b_unit = np.where(norm_b > 0, b / norm_b, np.nan)
    # Rounding can put a cosine a hair outside [-1, 1].
    return np.clip(a_unit @ b_unit.T, -1.0, 1.0)


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n = context.n
    columns = {name: np.full(n, np.nan) for name in
               ("prototype_cos_sim", "exemplar_cos_sim_max", "exemplar_cos_sim_mean")}
    info = {
        "prototype_cos_sim": {"formula": "cos(e(story), e(prototype)) of L2-normalised sentence embeddings"},
        "exemplar_cos_sim_max": {"formula": "max over the exemplar set of cos(e(story), e(exemplar))"},
        "exemplar_cos_sim_mean": {"formula": "mean over the exemplar set of cos(e(story), e(exemplar))"},
    }
    has_prototype = [i for i in range(n) if context.prototype_of[i] is not None]
    context.nan_log.nan("prototype_cos_sim", [i for i in range(n) if context.prototype_of[i] is None],
                        context.no_prototype_reason)
    if not context.exemplar_set:
        for name in ("exemplar_cos_sim_max", "exemplar_cos_sim_mean"):
            context.nan_log.nan(name, range(n), context.no_exemplar_set_reason)
    if not has_prototype and not context.exemplar_set:
        return columns, info
    similarity = cosine_similarity_matrix(context.story_embeddings, context.exemplar_embeddings)
    for i in range(n):
        if not np.isfinite(context.story_embeddings[i]).all():
            reason = context.embedding_nan_reason(i)
            if context.prototype_of[i] is not None:
                context.nan_log.nan("prototype_cos_sim", [i], reason)
            if context.exemplar_set:
                context.nan_log.nan("exemplar_cos_sim_max", [i], reason)
                context.nan_log.nan("exemplar_cos_sim_mean", [i], reason)
            continue
        if context.prototype_of[i] is not None:
            value = similarity[i, context.prototype_of[i]]
            columns["prototype_cos_sim"][i] = value
            if not np.isfinite(value):
                context.nan_log.nan("prototype_cos_sim", [i], "the prototype has no embedding")
        if context.exemplar_set:
            row = similarity[i, context.exemplar_set]
            row = row[np.isfinite(row)]
            if row.size:
                columns["exemplar_cos_sim_max"][i] = row.max()
                columns["exemplar_cos_sim_mean"][i] = row.mean()
            else:
                context.nan_log.nan("exemplar_cos_sim_max", [i], "no exemplar has an embedding")
                context.nan_log.nan("exemplar_cos_sim_mean", [i], "no exemplar has an embedding")
    return columns, info


FAMILY = MetricFamily(name=MetricName.cos_sim, level="story", needs=frozenset({Need.embedding, Need.exemplars}),
                      compute=measure)
