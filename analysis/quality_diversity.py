"""Quality against diversity, one curve per sampler family (the report of ``experiment=samplers``).

A setting's *family* is the samplers it runs beyond temperature, plus their
order when it is not the default (``family_of``): "temperature", "min_p",
"min_p, temperature first", "xtc", "top_n_sigma", ... It is derived from the
setting's stored parameters with ``experiments.samplers``, so it works for any
sweep, not only ``experiment=samplers``; a family ignores the samplers'
values (min_p 0.05 and 0.1 are both "min_p").

Each setting is a point: the *diversity* of its stories (the Vendi score and
the mean pairwise cosine distance of their embeddings, from the metrics
stage's ``embeddings.parquet``, with ``metrics.diversity``'s functions)
against their mean *quality* (the scorer perplexity; the generation
perplexity when the scorer did not run; the mean rating of each criterion
when ratings are given). A family's curve runs through its settings in order
of temperature, so "better" means a better frontier (more diversity at the
same quality), not one lucky setting.

Confidence intervals: B bootstrap resamples of the setting's stories (with
replacement, a numpy Generator seeded by (seed, setting_id), so a setting's
interval does not depend on the other settings), each measure recomputed on
the same resample, percentile intervals. Two corrections keep the intervals
around the estimates: the pairwise distance of a resample leaves out pairs
of a story with its own copy (a copy is at distance 0, not a second story),
and the Vendi score, which a repeated story lowers (measured on simulated
embeddings: about 8% at 50 stories), has its resampled values shifted by
their mean minus the estimate before the percentiles are taken.

``closest_settings`` is the table: for each setting of temperature alone (a
diversity level), the setting of every other family whose diversity is
closest, its quality beside temperature alone's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.config import AnalysisInputError
from analysis.run_data import RunData
from experiments import samplers
from experiments.config import SamplingConfig
from experiments.errors import HarnessInputError
from experiments.store import BASE_SEED, SETTING_PREFIX
from metrics.diversity import vendi_score

REFERENCE_FAMILY = "temperature"
EMBEDDINGS_FILE = "embeddings.parquet"  # metrics.compute.EMBEDDINGS_FILE (not imported: that loads the models' code)
DIVERSITY_MEASURES = ("vendi_score", "mean_pairwise_cos_dist")
# The first of these with values is the quality measure from metrics.parquet.
PERPLEXITY_MEASURES = ("perplexity_scorer", "perplexity")
POINT_COLUMNS = ["setting_id", "family", "temperature", "measure", "kind", "value", "ci_low", "ci_high", "n"]
CLOSEST_COLUMNS = ["diversity_measure", "quality_measure", "reference_temperature", "reference_diversity",
                   "family", "temperature", "diversity", "diversity_ci_low", "diversity_ci_high",
                   "quality", "quality_ci_low", "quality_ci_high",
                   "reference_quality", "reference_quality_ci_low", "reference_quality_ci_high"]


class QualityDiversityError(AnalysisInputError):
    """A run whose settings or embeddings cannot be read for the quality-diversity analysis."""


# ---------------------------------------------------------------- families


_FIELD_TYPES = typing.get_type_hints(SamplingConfig)


def _kind(field: str) -> Any:
    """The field's type without Optional: int, float, str, list or dict."""
    hint = _FIELD_TYPES[field]
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = arguments[0] if typing.get_origin(hint) is typing.Union else hint
    return typing.get_origin(hint) or hint


def _plain(field: str, value: Any) -> Any:
    """A stored value as the SamplingConfig field wants it (tables hold NaN, numpy scalars and JSON text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    kind = _kind(field)
    if kind in (list, dict) and isinstance(value, str):
        value = json.loads(value)  # story_table writes lists and dicts as JSON
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # an int column with a missing value elsewhere is float
    return value


def sampling_of(parameters: Mapping[str, Any]) -> SamplingConfig:
    """A SamplingConfig rebuilt from a setting's stored parameters (a story's ``setting``, or a row of
    a run's table with its column names: ``base_seed``, ``setting.<key>``); other keys are ignored,
    unset ones take the schema's defaults."""
    given = {}
    for column, value in parameters.items():
        key = "seed" if column == BASE_SEED else column
        while key.startswith(SETTING_PREFIX):
            key = key[len(SETTING_PREFIX):]
        if key in _FIELD_TYPES and key != "n":
            plain = _plain(key, value)
            if plain is not None:
                given[key] = plain
    try:
        return SamplingConfig(**given)
    except (HarnessInputError, TypeError) as error:
        raise QualityDiversityError(f"setting {dict(parameters)!r} is not a valid sampling setting: {error}") from None


def family_of(sampling: SamplingConfig) -> str:
    """The samplers a setting runs beyond temperature (in the default order's sequence), plus their
    order when it differs from the default: "temperature" for temperature alone, "min_p", "min_p, xtc",
    "min_p, temperature first", "top_k, min_p, order min_p > temperature > top_k". Dynamic temperature
    is "dynatemp"; Mirostat, which replaces the chain, is "mirostat"."""
    if sampling.mirostat_mode:
        return "mirostat"
    used = samplers.in_use(sampling) | {"temperature"}
    names = [name for name in samplers.DEFAULT_ORDER if name in used and name != "temperature"]
    if samplers.dynatemp(sampling) is not None:
        names.append("dynatemp")
    family = ", ".join(names) or REFERENCE_FAMILY
    default = [name for name in samplers.DEFAULT_ORDER if name in used]
    ordered = [name for name in samplers.order(sampling) if name in used]
    if ordered == default:
        return family
    if ordered[0] == "temperature" and ordered[1:] == [name for name in default if name != "temperature"]:
        return f"{family}, temperature first"
    return f"{family}, order {' > '.join(ordered)}"


def setting_families(run: RunData) -> pd.DataFrame:
    """One row per setting of the run, in the run's order: setting_id, family, temperature."""
    first = run.stories.drop_duplicates("setting_id").set_index("setting_id")
    rows = []
    for setting_id in run.settings_order:
        sampling = sampling_of(first.loc[setting_id, run.setting_keys].to_dict())
        rows.append({"setting_id": setting_id, "family": family_of(sampling),
                     "temperature": float(sampling.temperature)})
    return pd.DataFrame(rows, columns=["setting_id", "family", "temperature"])


def family_order(families: pd.DataFrame) -> list[str]:
    """Temperature alone first, then the others by name."""
    names = sorted(set(families["family"]))
    return ([REFERENCE_FAMILY] if REFERENCE_FAMILY in names else []) + [n for n in names if n != REFERENCE_FAMILY]


def label_settings_by_family(run: RunData, families: pd.DataFrame) -> None:
    """Put each setting's family in its labels, ticks and titles, and order settings by family, then as
    before (by their swept values): settings of different families share their swept values."""
    family = dict(zip(families["setting_id"], families["family"]))
    rank = {name: i for i, name in enumerate(family_order(families))}
    position = {setting_id: i for i, setting_id in enumerate(run.settings_order)}
    run.settings_order = sorted(run.settings_order, key=lambda s: (rank[family[s]], position[s]))
    run.setting_labels = {s: f"{family[s]}: {label}" for s, label in run.setting_labels.items()}
    run.setting_ticks = {s: f"{family[s]}: {tick}" for s, tick in run.setting_ticks.items()}
    # Panel titles are narrow: one line per part of the family.
    run.setting_titles = {s: ",\n".join(family[s].split(", ")) + "\n" + title
                          for s, title in run.setting_titles.items()}
    run.stories["setting_label"] = run.stories["setting_id"].map(run.setting_labels)


# ---------------------------------------------------------------- the inputs


def load_embeddings(run_dir: str | Path) -> Optional[dict[str, np.ndarray]]:
    """story_id -> embedding, from the metrics stage's embeddings.parquet (None when there is none)."""
    path = Path(run_dir) / EMBEDDINGS_FILE
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    missing = [c for c in ("story_id", "embedding") if c not in table.columns]
    if missing:
        raise QualityDiversityError(f"{path}: no column(s) {missing}; written by the metrics stage with "
                                    "story_id and embedding")
    return {str(story_id): np.asarray(vector, dtype=np.float64)
            for story_id, vector in zip(table["story_id"], table["embedding"]) if vector is not None}


def quality_measures(run: RunData, ratings: Optional[pd.DataFrame], criteria: Sequence[str]) -> pd.DataFrame:
    """story_id plus one column per quality measure: the first of PERPLEXITY_MEASURES with values, and
    (with ratings) each criterion's mean rating of the story."""
    frame = run.stories[["story_id"]].copy()
    perplexity = next((m for m in PERPLEXITY_MEASURES if m in run.metrics), None)
    if perplexity is not None:
        frame[perplexity] = run.stories[perplexity].to_numpy(dtype=float)
    if ratings is not None:
        means = ratings.groupby("story_id")[list(criteria)].mean()
        frame = frame.merge(means, left_on="story_id", right_index=True, how="left")
    return frame


# ---------------------------------------------------------------- one setting


def _mean_pairwise_distance(distances: np.ndarray, counts: np.ndarray) -> float:
    """Mean cosine distance over pairs of draws of different stories, story i drawn counts[i] times:
    sum_ij c_i c_j D_ij / ((sum c)^2 - sum c^2) (D has a zero diagonal). NaN without such a pair."""
    pairs = counts.sum() ** 2 - (counts ** 2).sum()
    return float(counts @ distances @ counts / pairs) if pairs > 0 else math.nan


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1 - confidence)/2 and (1 + confidence)/2 percentiles (numpy's linear rule) of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int  # stories the estimate uses


def bootstrap_setting(vectors: np.ndarray, quality: Mapping[str, np.ndarray], draws: np.ndarray,
                      confidence: float) -> dict[str, Estimate]:
    """Each diversity measure and each quality mean of one setting, with percentile intervals over
    ``draws`` (B x n story indices, one resample per row).

    ``vectors`` has one row per story (a NaN row: no embedding; such a story counts for quality only);
    ``quality`` one array per measure (NaN: no value). See the module docstring for the two corrections.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    has_vector = np.isfinite(vectors).all(axis=1)
    unit = np.where(has_vector[:, None], vectors, 0.0)
    norms = np.linalg.norm(unit, axis=1)
    unit[has_vector] /= norms[has_vector, None]
    distances = 1.0 - unit @ unit.T
    np.fill_diagonal(distances, 0.0)
    embedded = np.flatnonzero(has_vector)

    def vendi(indices: np.ndarray) -> float:
        return vendi_score(vectors[indices]) if len(indices) else math.nan

    replicates: dict[str, list[float]] = {"vendi_score": [], "mean_pairwise_cos_dist": []}
    for draw in draws:
        drawn = draw[has_vector[draw]]
        replicates["vendi_score"].append(vendi(drawn))
        replicates["mean_pairwise_cos_dist"].append(
            _mean_pairwise_distance(distances, np.bincount(drawn, minlength=len(vectors)).astype(np.float64)))
    estimates = {
        "vendi_score": vendi(embedded),
        "mean_pairwise_cos_dist": _mean_pairwise_distance(distances, has_vector.astype(np.float64)),
    }
    shift = np.nanmean(replicates["vendi_score"]) - estimates["vendi_score"] if len(draws) else 0.0
    replicates["vendi_score"] = list(np.asarray(replicates["vendi_score"]) - shift)
    results = {name: Estimate(estimates[name], *percentile_interval(replicates[name], confidence), len(embedded))
               for name in DIVERSITY_MEASURES}
    for name, values in quality.items():
        values = np.asarray(values, dtype=np.float64)
        rated = np.isfinite(values)
        means = [float(np.mean(values[draw][rated[draw]])) if rated[draw].any() else math.nan for draw in draws]
        value = float(np.mean(values[rated])) if rated.any() else math.nan
        results[name] = Estimate(value, *percentile_interval(np.asarray(means), confidence), int(rated.sum()))
    return results


def setting_draws(setting_id: str, n: int, resamples: int, seed: int) -> np.ndarray:
    """B x n indices drawn with replacement, seeded by (seed, sha256(setting_id))."""
    setting_seed = int(hashlib.sha256(setting_id.encode("utf-8")).hexdigest()[:15], 16)
    return np.random.default_rng([seed, setting_seed]).integers(0, n, size=(resamples, n))


# ---------------------------------------------------------------- the run


def quality_diversity_points(stories: pd.DataFrame, embeddings: Mapping[str, np.ndarray], quality: pd.DataFrame,
                             families: pd.DataFrame, resamples: int = 1000, seed: int = 0,
                             confidence: float = 0.95) -> pd.DataFrame:
    """One row per setting and measure (POINT_COLUMNS): kind "diversity" or "quality", the estimate, its
    bootstrap interval and the stories it uses. ``stories`` has story_id and setting_id; ``quality`` has
    story_id and one column per quality measure; ``families`` is ``setting_families``'s table."""
    quality_names = [c for c in quality.columns if c != "story_id"]
    joined = stories[["story_id", "setting_id"]].merge(quality, on="story_id", how="left")
    width = len(next(iter(embeddings.values()))) if embeddings else 1
    rows = []
    for setting in families.itertuples(index=False):
        members = joined[joined["setting_id"] == setting.setting_id]
        if members.empty:
            continue
        vectors = np.stack([embeddings.get(story_id, np.full(width, np.nan)) for story_id in members["story_id"]])
        draws = setting_draws(setting.setting_id, len(members), resamples, seed)
        estimates = bootstrap_setting(vectors, {name: members[name].to_numpy(float) for name in quality_names},
                                      draws, confidence)
        for name, estimate in estimates.items():
            rows.append({"setting_id": setting.setting_id, "family": setting.family,
                         "temperature": setting.temperature, "measure": name,
                         "kind": "diversity" if name in DIVERSITY_MEASURES else "quality",
                         **dataclasses.asdict(estimate)})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def closest_settings(points: pd.DataFrame, diversity_measure: str, quality_measure: str,
                     reference: str = REFERENCE_FAMILY) -> pd.DataFrame:
    """For each setting of ``reference`` (in order of temperature), the setting of every other family
    whose ``diversity_measure`` is closest to it (the lower temperature on a tie), with the two
    settings' ``quality_measure`` and intervals side by side (CLOSEST_COLUMNS)."""
    def wide(measure: str) -> pd.DataFrame:
        part = points[points["measure"] == measure].set_index("setting_id")
        return part[["family", "temperature", "value", "ci_low", "ci_high"]]

    diversity, quality = wide(diversity_measure), wide(quality_measure)
    settings = diversity.join(quality[["value", "ci_low", "ci_high"]], rsuffix="_quality", how="left")
    settings = settings[np.isfinite(settings["value"])].sort_values(["family", "temperature"], kind="stable")
    levels = settings[settings["family"] == reference]
    rows = []
    for level in levels.itertuples():
        for family, candidates in settings[settings["family"] != reference].groupby("family", sort=True):
            closest = candidates.iloc[int(np.argmin(np.abs(candidates["value"].to_numpy() - level.value)))]
            rows.append({
                "diversity_measure": diversity_measure, "quality_measure": quality_measure,
                "reference_temperature": level.temperature, "reference_diversity": level.value,
                "family": family, "temperature": closest["temperature"], "diversity": closest["value"],
                "diversity_ci_low": closest["ci_low"], "diversity_ci_high": closest["ci_high"],
                "quality": closest["value_quality"], "quality_ci_low": closest["ci_low_quality"],
                "quality_ci_high": closest["ci_high_quality"],
                "reference_quality": level.value_quality, "reference_quality_ci_low": level.ci_low_quality,
                "reference_quality_ci_high": level.ci_high_quality,
            })
    return pd.DataFrame(rows, columns=CLOSEST_COLUMNS)
