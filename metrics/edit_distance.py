"""Normalised edit distance to the prototype and to the exemplar set.

Columns: ``prototype_edit_dist_norm`` (the paper's measure),
``exemplar_edit_dist_norm_min`` (distance to the nearest exemplar),
``exemplar_edit_dist_norm_max`` and ``exemplar_edit_dist_norm_mean``.

Distance = Levenshtein distance (insertions, deletions, substitutions, each
cost 1) divided by the length of the longer sequence, so it lies in [0, 1].
The unit is a word (default: words and punctuation marks), a character, or a
model token. rapidfuzz computes it.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from metrics.config import EditUnit, MetricName, MetricsConfig, TokenModel
from metrics.context import MeasureContext, MetricFamily, Need
from metrics.text import word_tokens

# Code points rapidfuzz can take in a str, skipping the surrogate block.
_SURROGATES = range(0xD800, 0xE000)
_MAX_SYMBOLS = 0x110000 - len(_SURROGATES) - 1


def normalised_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """d(a, b) = Levenshtein(a, b) / max(len(a), len(b)); 0.0 when both are empty.

    ``a`` and ``b`` are strings (unit: character) or sequences of tokens.
    """
    return float(Levenshtein.normalized_distance(a, b))


def as_symbol_strings(token_lists: Sequence[Sequence[Hashable]]) -> list[Any]:
    """Each distinct token becomes one character, so every sequence becomes a str.

    The Levenshtein distance is unchanged (equal tokens map to equal
    characters, distinct to distinct), and rapidfuzz runs its fast bit-parallel
    string kernels instead of hashing Python objects pair by pair. With more
    distinct tokens than Unicode has code points, the token lists are returned
    as they are (slower, same result).
    """
    vocabulary: dict[Hashable, int] = {}
    for tokens in token_lists:
        for token in tokens:
            vocabulary.setdefault(token, len(vocabulary))
    if len(vocabulary) > _MAX_SYMBOLS:
        return [list(tokens) for tokens in token_lists]

    def symbol(index: int) -> str:
        code = index + 1  # keep NUL out
        return chr(code if code < _SURROGATES.start else code + len(_SURROGATES))

    table = {token: symbol(index) for token, index in vocabulary.items()}
    return ["".join(table[token] for token in tokens) for tokens in token_lists]


def unit_sequences(texts: Sequence[str], unit: EditUnit,
                   token_ids: Callable[[str], list[int]] | None = None) -> list[Any]:
    """The texts as sequences of the chosen unit, ready for rapidfuzz."""
    if unit == EditUnit.char:
        return list(texts)
    if unit == EditUnit.word:
        return as_symbol_strings([word_tokens(text) for text in texts])
    if token_ids is None:
        raise ValueError("unit=token needs a tokenizer")
    return as_symbol_strings([token_ids(text) for text in texts])


def distance_matrix(queries: Sequence[Any], choices: Sequence[Any], workers: int = 1) -> np.ndarray:
    """D[i, j] = normalised edit distance between queries[i] and choices[j]."""
    if not len(queries) or not len(choices):
        return np.zeros((len(queries), len(choices)))
    return process.cdist(queries, choices, scorer=Levenshtein.normalized_distance,
                         dtype=np.float64, workers=workers)


def paired_distances(left: Sequence[Any], right: Sequence[Any], workers: int = 1) -> np.ndarray:
    """d[k] = normalised edit distance between left[k] and right[k]."""
    if not len(left):
        return np.zeros(0)
    return process.cpdist(left, right, scorer=Levenshtein.normalized_distance,
                          dtype=np.float64, workers=workers)


def unit_needs(config: MetricsConfig) -> frozenset[Need]:
    """The model whose tokenizer ``edit_distance.unit=token`` uses; nothing for words and characters."""
    if config.edit_distance.unit != EditUnit.token:
        return frozenset()
    return frozenset({Need.embedding if config.edit_distance.token_model == TokenModel.embedding else Need.scorer})


def context_sequences(context: MeasureContext) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Stories' and exemplars' unit sequences (one shared symbol table), computed once per context."""
    if "edit_units" not in context.memo:
        config = context.config.edit_distance
        token_ids, tokenizer = None, None
        if config.unit == EditUnit.token:
            model = context.embedder if config.token_model == TokenModel.embedding else context.scorer
            token_ids, tokenizer = model.token_ids, model.describe()["model"]
        texts = context.texts + [exemplar.text for exemplar in context.exemplars]
        sequences = unit_sequences(texts, config.unit, token_ids)
        description = {"unit": config.unit.value,
                       "normalisation": "Levenshtein distance / length of the longer sequence (rapidfuzz)"}
        if config.unit == EditUnit.word:
            description["tokens"] = "words (letters/digits, inner apostrophes kept) and punctuation marks, case kept"
        if tokenizer:
            description["tokenizer"] = tokenizer
        context.memo["edit_units"] = (sequences[: context.n], sequences[context.n:], description)
    return context.memo["edit_units"]


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n = context.n
    names = ("prototype_edit_dist_norm", "exemplar_edit_dist_norm_min", "exemplar_edit_dist_norm_max",
             "exemplar_edit_dist_norm_mean")
    columns = {name: np.full(n, np.nan) for name in names}
    prototype_stories = [i for i in range(n) if context.prototype_of[i] is not None]
    context.nan_log.nan("prototype_edit_dist_norm", [i for i in range(n) if context.prototype_of[i] is None],
                        context.no_prototype_reason)
    if not context.exemplar_set:
        for name in names[1:]:
            context.nan_log.nan(name, range(n), context.no_exemplar_set_reason)
    description: dict[str, Any] = {"unit": context.config.edit_distance.unit.value}
    if prototype_stories or context.exemplar_set:
        stories, exemplars, description = context_sequences(context)
        needed = sorted({context.prototype_of[i] for i in prototype_stories} | set(context.exemplar_set))
        distances = np.full((n, len(context.exemplars)), np.nan)
        distances[:, needed] = distance_matrix(stories, [exemplars[j] for j in needed],
                                               workers=context.config.workers)
        for i in prototype_stories:
            columns["prototype_edit_dist_norm"][i] = distances[i, context.prototype_of[i]]
        if context.exemplar_set:
            to_set = distances[:, context.exemplar_set]
            columns["exemplar_edit_dist_norm_min"] = to_set.min(axis=1)
            columns["exemplar_edit_dist_norm_max"] = to_set.max(axis=1)
            columns["exemplar_edit_dist_norm_mean"] = to_set.mean(axis=1)
    formula = "Levenshtein(story, {}) / max(len(story), len({})) in {} units"
    unit = description["unit"]
    info = {
        "edit_distance": description,
        "prototype_edit_dist_norm": {"formula": formula.format("prototype", "prototype", unit)},
        "exemplar_edit_dist_norm_min": {"formula": "min over the exemplar set of " + formula.format("e", "e", unit)},
        "exemplar_edit_dist_norm_max": {"formula": "max over the exemplar set of " + formula.format("e", "e", unit)},
        "exemplar_edit_dist_norm_mean": {"formula": "mean over the exemplar set of " + formula.format("e", "e", unit)},
    }
    return columns, info


FAMILY = MetricFamily(name=MetricName.edit_dist, level="story", needs=frozenset({Need.exemplars}),
                      config_needs=unit_needs, compute=measure)
