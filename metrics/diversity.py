"""Diversity within each setting: one row per ``setting_id`` in ``diversity.parquet``.

Columns: ``n`` (stories), ``n_embedded`` (stories with an embedding),
``mean_pairwise_cos_dist``, ``vendi_score``, ``distinct_1`` ... ``distinct_k``,
``compression_ratio``, ``mean_pairwise_edit_dist_norm``, ``pairs_sampled`` and
``n_pairs``, after the setting's own parameters.

Pairwise measures cost O(n^2) per setting; above
``diversity.pair_sampling_threshold`` stories a seeded uniform sample of
``diversity.sampled_pairs`` distinct pairs is used instead (``pairs_sampled``
says so). The Vendi score uses the d x d Gram matrix when n > d, so it stays
O(n d^2).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from metrics.config import DiversityConfig, MetricName
from metrics.context import MeasureContext, MetricFamily, Need
from metrics.edit_distance import context_sequences, paired_distances, unit_needs
from metrics.text import word_tokens

log = logging.getLogger(__name__)


def vendi_score(vectors: np.ndarray) -> float:
    """VS = exp(-sum_i lambda_i log lambda_i), lambda_i the eigenvalues of K / n,
    K[a, b] = cos(x_a, x_b) (Friedman and Dieng, 2023).

    Rows are L2-normalised first, so K has a unit diagonal and the eigenvalues
    of K / n sum to 1. 1 for n identical vectors, n for n orthogonal ones.
    K / n = X X^T / n has the same non-zero eigenvalues as X^T X / n, so the
    smaller of the two is decomposed. NaN for no rows.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    n = vectors.shape[0]
    if n == 0:
        return math.nan
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vendi_score needs finite, non-zero vectors")
    unit = vectors / norms
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: see metrics.projection
        gram = unit @ unit.T if n <= unit.shape[1] else unit.T @ unit
        eigenvalues = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """distinct-n = (number of distinct n-grams) / (number of n-grams), pooled over the texts
    (Li et al., 2016). n-grams do not cross text boundaries. NaN when there are none."""
    grams = [tuple(tokens[i:i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    if not grams:
        return math.nan
    return len(set(grams)) / len(grams)


def compression_ratio(texts: Sequence[str]) -> float:
    """size(utf-8 of the texts joined by "\\n") / size(its gzip, level 9, mtime 0).

    Higher means more redundant, i.e. less diverse (Shaib et al., 2024). NaN
    for no text.
    """
    data = "\n".join(texts).encode("utf-8")
    if not data:
        return math.nan
    return len(data) / len(gzip.compress(data, compresslevel=9, mtime=0))


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, in row order."""
    return np.triu_indices(n, k=1)


def unrank_pairs(n: int, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs at positions ``ranks`` of ``all_pairs(n)``, without building them all.

    Row i starts at offset(i) = i (2n - i - 1) / 2; i comes from solving that
    quadratic, then an exact integer correction for rounding.
    """
    ranks = np.asarray(ranks, dtype=np.int64)

    def offset(i: np.ndarray) -> np.ndarray:
        return i * (2 * n - i - 1) // 2

    i = np.floor(((2 * n - 1) - np.sqrt((2 * n - 1) ** 2 - 8 * ranks.astype(np.float64))) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    for _ in range(3):
        i = np.where(offset(i + 1) <= ranks, i + 1, i)
        i = np.where(offset(i) > ranks, i - 1, i)
    return i, ranks - offset(i) + i + 1


def choose_pairs(n: int, config: DiversityConfig, setting_id: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """All pairs, or (above the threshold) a seeded sample of distinct pairs; and whether sampled.

    The seed mixes the configured seed with the setting id, so a setting's
    sample does not depend on which other settings are in the run.
    """
    total = n * (n - 1) // 2
    if n <= config.pair_sampling_threshold or config.sampled_pairs >= total:
        first, second = all_pairs(n)
        return first, second, False
    setting_seed = int(hashlib.sha256(setting_id.encode("utf-8")).hexdigest()[:15], 16)
    rng = np.random.default_rng([config.seed, setting_seed])
    ranks = np.sort(rng.choice(total, size=config.sampled_pairs, replace=False))
    first, second = unrank_pairs(n, ranks)
    return first, second, True


def mean_pairwise_cosine_distance(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """mean over the pairs (a, b) of 1 - cos(x_a, x_b). NaN for no pairs."""
    if len(first) == 0:
        return math.nan
    vectors = np.asarray(vectors, dtype=np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return float(np.mean(1.0 - np.einsum("ij,ij->i", unit[first], unit[second])))


def _setting_parameters(frame: pd.DataFrame, columns: list[str], setting_id: str) -> dict[str, Any]:
    parameters = {}
    for column in columns:
        values = frame[column].dropna().astype(str).unique() if column in frame else []
        if len(values) > 1:
            log.warning("setting %s has %d different values of %s; diversity.parquet leaves it empty",
                        setting_id, len(values), column)
            parameters[column] = None
        else:
            parameters[column] = frame[column].iloc[0] if column in frame else None
    return parameters


def measure_settings(context: MeasureContext, stories: pd.DataFrame,
                     setting_columns: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row of diversity measures per setting_id of ``stories`` (aligned with the context's stories)."""
    config = context.config.diversity
    vectors = context.story_embeddings
    sequences, _, unit_description = context_sequences(context)
    tokens = [word_tokens(text) for text in context.texts]
    metric_columns = ["n", "n_embedded", "mean_pairwise_cos_dist", "vendi_score",
                      *[f"distinct_{k}" for k in config.distinct_n], "compression_ratio",
                      "mean_pairwise_edit_dist_norm", "pairs_sampled", "n_pairs"]
    renamed = {c: (f"setting_{c}" if c in metric_columns or c == "setting_id" else c) for c in setting_columns}
    notes: dict[str, list[str]] = {}
    rows = []
    setting_ids = stories["setting_id"].astype(str).tolist()
    has_vector = np.isfinite(vectors).all(axis=1)
    for setting_id in dict.fromkeys(setting_ids):
        members = np.flatnonzero(np.asarray(setting_ids) == setting_id)
        n = len(members)
        embedded = members[has_vector[members]]
        first, second, sampled = choose_pairs(n, config, setting_id)
        row: dict[str, Any] = {"setting_id": setting_id}
        parameters = _setting_parameters(stories.iloc[members], setting_columns, setting_id)
        row.update({renamed[c]: v for c, v in parameters.items()})
        # Cosine pairs: the chosen pairs whose two stories both have an embedding.
        both = has_vector[members[first]] & has_vector[members[second]]
        row["n"] = n
        row["n_embedded"] = len(embedded)
        row["mean_pairwise_cos_dist"] = mean_pairwise_cosine_distance(
            vectors, members[first][both], members[second][both])
        row["vendi_score"] = vendi_score(vectors[embedded]) if len(embedded) else math.nan
        for k in config.distinct_n:
            row[f"distinct_{k}"] = distinct_n([tokens[i] for i in members], k)
        row["compression_ratio"] = compression_ratio([context.texts[i] for i in members])
        edit = paired_distances([sequences[i] for i in members[first]], [sequences[i] for i in members[second]],
                                workers=context.config.workers)
        row["mean_pairwise_edit_dist_norm"] = float(edit.mean()) if len(edit) else math.nan
        row["pairs_sampled"] = sampled
        row["n_pairs"] = int(len(first))
        setting_notes = []
        if n < 2:
            setting_notes.append("fewer than 2 stories: pairwise measures are NaN")
        if len(embedded) < n:
            setting_notes.append(f"{n - len(embedded)} stories without an embedding are left out of "
                                 f"vendi_score and mean_pairwise_cos_dist ({int(both.sum())} cosine pairs)")
        if setting_notes:
            notes[setting_id] = setting_notes
            for note in setting_notes:
                log.warning("diversity of setting %s: %s", setting_id, note)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["setting_id", *renamed.values(), *metric_columns])
    info = {"diversity": {
        "file": "diversity.parquet",
        "unit_of_analysis": "setting_id",
        "mean_pairwise_cos_dist": "mean over pairs of 1 - cos(e_a, e_b), story embeddings",
        "vendi_score": "exp(Shannon entropy of the eigenvalues of K/n), K the cosine-similarity matrix",
        "distinct_n": "distinct n-grams / n-grams of word tokens pooled over the setting's stories",
        "compression_ratio": "bytes of the setting's texts joined by newlines / bytes of their gzip (level 9)",
        "mean_pairwise_edit_dist_norm": "mean over pairs of the normalised edit distance",
        "edit_distance": unit_description,
        "pair_sampling": {"threshold_stories": config.pair_sampling_threshold,
                          "sampled_pairs": config.sampled_pairs, "seed": config.seed,
                          "method": "uniform without replacement, seeded by (seed, sha256(setting_id))"},
        "notes": notes,
    }}
    return table, info


# Pairwise cosine distances and the Vendi score need embeddings; pairwise edit distances in model tokens
# need that model's tokenizer.
FAMILY = MetricFamily(name=MetricName.diversity, level="setting", needs=frozenset({Need.embedding}),
                      config_needs=unit_needs, compute=measure_settings, file="diversity.parquet")
