"""How well an LLM judge's ratings agree with the humans', story by story.

Every statistic compares *story means*: a story's human rating is the mean
over its participants, the judge's the mean over its repeats (failed
judgments, NaN, left out). Over the stories that both rated, per judge, score
kind ("sampled" answer or G-Eval's "expected" score) and criterion:

- Spearman and Pearson correlation of the two story means, each with a
  percentile bootstrap CI over stories (pairs resampled together);
- the bias, judge minus human, on the rating scale;
- Krippendorff's interval alpha and the one-way ICCs of the human ratings,
  then again with the judge added as one more rater (its story mean): if the
  judge rates like a human, adding it leaves them about where they were;
- the temperature effect (slope) in the humans' ratings and in the judge's,
  each from the model that fits its design (below).

A small judge often gives one value to every story; its correlations are then
undefined, and the table says so in ``notes`` instead of failing.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from analysis.criteria import SCALE
from analysis.figures import _figure, _with_style, save_figure
from analysis.mixed_models import fit_mixed_model
from analysis.reliability import icc_oneway, krippendorff_interval

STORY, RATER = "story_id", "participant_id"
JUDGE_COLUMNS = ("judge", "score_kind")
MIN_STORIES = 3  # two stories always correlate at +/-1: no information

CALIBRATION_COLUMNS = [
    "judge", "score_kind", "criterion", "n_stories", "n_judge_ratings", "n_failed",
    "spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "pearson_ci_low", "pearson_ci_high",
    "human_mean", "judge_mean", "bias",
    "alpha_humans", "alpha_with_judge", "icc1_humans", "icc1_with_judge", "icc1k_humans", "icc1k_with_judge",
    "beta_humans", "beta_humans_ci_low", "beta_humans_ci_high",
    "beta_judge", "beta_judge_ci_low", "beta_judge_ci_high", "judge_beta_model",
    "notes",
]
BETA_MIXED = "mixedlm (random intercept per repeat)"
BETA_OLS = "ols (one repeat)"

# Verdict thresholds on |Spearman rho| (the usual reading of rank correlations: < 0.2 negligible, < 0.4 weak).
NEAR_ZERO_BELOW = 0.2
WEAK_BELOW = 0.4

NAN = float("nan")


# --- story means and correlations -------------------------------------------------------------------------

def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(map(repr, missing))}; needed: "
                         f"{', '.join(columns)} (found: {', '.join(map(str, frame.columns))})")


def story_means(ratings: pd.DataFrame, criteria: Sequence[str]) -> pd.DataFrame:
    """Mean of each criterion over a story's raters (NaN ignored; NaN if no rater gave one), by story_id."""
    _require_columns(ratings, (STORY, *criteria), "ratings")
    return ratings.groupby(STORY)[list(criteria)].mean()


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Pearson's r along ``axis`` (vectorized for the bootstrap); NaN, silently, where x or y is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return stats.pearsonr(x, y, axis=axis).statistic


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Spearman's rho as Pearson's r of average ranks, which is what ``scipy.stats.spearmanr`` computes;
    written so because spearmanr has no axis that pairs two samples slice by slice."""
    return pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


def _bootstrap(
    x: Sequence[float], y: Sequence[float], statistic: Callable, n_resamples: int, confidence: float, seed: int
) -> tuple[float, float, int]:
    """(low, high, number of resamples where the statistic was undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"bootstrap: x and y must be 1-D and of one length (got shapes {x.shape}, {y.shape})")
    if len(x) < 2:
        raise ValueError(f"bootstrap: needs at least 2 pairs (got {len(x)})")
    with warnings.catch_warnings():
        # scipy warns when a resample's NaN makes its interval NaN; those cases are recomputed below.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((x, y), statistic, n_resamples=n_resamples, paired=True, vectorized=True,
                                 method="percentile", confidence_level=confidence, rng=seed)
    distribution = np.asarray(result.bootstrap_distribution, dtype=float)
    undefined = int(np.isnan(distribution).sum())
    if undefined == 0:
        return float(result.confidence_interval.low), float(result.confidence_interval.high), 0
    if undefined == len(distribution):
        return NAN, NAN, undefined
    # A resample whose x or y is constant has no correlation (NaN). It is left out and the CI is the same
    # percentiles of the resamples where the statistic is defined, i.e. conditional on the resampled
    # stories not all sharing one value; the caller reports how many were left out.
    tail = (1 - confidence) / 2
    low, high = stats.quantile(distribution, [tail, 1 - tail], nan_policy="omit")
    return float(low), float(high), undefined


def bootstrap_ci(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Callable = spearman,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(x, y, axis)`` over paired (x, y) observations (stories).

    ``statistic`` must be vectorized along ``axis`` (as :func:`spearman`, :func:`pearson`). Resamples where
    it is undefined (NaN: constant x or y) are left out of the percentiles; NaN if every resample is.
    """
    low, high, _ = _bootstrap(x, y, statistic, n_resamples, confidence, seed)
    return low, high


def _one_value(values: pd.Series) -> float | None:
    """The value every entry shares, or None if they differ."""
    distinct = values.unique()
    return float(distinct[0]) if len(distinct) == 1 else None


def _correlations(
    human: pd.Series, judge: pd.Series, n_resamples: int, confidence: float, seed: int
) -> tuple[dict, list[str]]:
    row = {f"{name}{part}": NAN for name in ("spearman", "pearson") for part in ("", "_ci_low", "_ci_high")}
    n = len(human)
    if n < MIN_STORIES:
        return row, [f"only {n} stories rated by both: correlation undefined"]
    judge_value, human_value = _one_value(judge), _one_value(human)
    if judge_value is not None:
        return row, [f"judge gave one value ({judge_value:g}) to every story: correlation undefined"]
    if human_value is not None:
        return row, [f"every story has the human mean {human_value:g}: correlation undefined"]
    x, y = human.to_numpy(float), judge.to_numpy(float)
    notes = []
    for name, statistic, point in (("spearman", spearman, stats.spearmanr), ("pearson", pearson, stats.pearsonr)):
        low, high, undefined = _bootstrap(x, y, statistic, n_resamples, confidence, seed)
        row.update({name: float(point(x, y).statistic), f"{name}_ci_low": low, f"{name}_ci_high": high})
        if undefined and name == "spearman":  # the same resamples are constant for both statistics
            notes.append(f"{undefined} of {n_resamples} bootstrap resamples gave one value to every story "
                         f"and were left out of the CIs")
    return row, notes


# --- agreement with the judge as one more rater ------------------------------------------------------------

def _or_none(compute: Callable[[], object], what: str, notes: list[str]):
    """A statistic the data cannot give (too few ratings, no variance) is None, with the reason noted."""
    try:
        return compute()
    except (ValueError, ZeroDivisionError) as error:
        notes.append(f"{what} undefined: {str(error).splitlines()[0] or type(error).__name__}")
        return None


def _agreement(
    human_ratings: pd.DataFrame, judge_story_means: pd.Series, criterion: str, judge_rater: str
) -> tuple[dict, list[str]]:
    if judge_rater in set(human_ratings[RATER]):
        raise ValueError(f"human: participant id {judge_rater!r} is the id reserved for the judge as a rater")
    judge_ratings = pd.DataFrame({STORY: judge_story_means.index, RATER: judge_rater,
                                  criterion: judge_story_means.to_numpy(float)})
    data_sets = {"humans": human_ratings,
                 "with_judge": pd.concat([human_ratings, judge_ratings], ignore_index=True)}
    row, notes = {}, []
    for name, ratings in data_sets.items():
        alpha = _or_none(lambda: krippendorff_interval(ratings, STORY, criterion, RATER), f"alpha_{name}", notes)
        icc = _or_none(lambda: icc_oneway(ratings, STORY, criterion), f"icc_{name}", notes) or {}
        row[f"alpha_{name}"] = NAN if alpha is None else float(alpha)
        row[f"icc1_{name}"], row[f"icc1k_{name}"] = icc.get("icc1", NAN), icc.get("icc1k", NAN)
    return row, notes


# --- temperature effects ------------------------------------------------------------------------------------

def _story_temperature(human: pd.DataFrame, temperature: pd.Series | None) -> pd.Series | None:
    """Temperature by story_id: the one given, else the humans' column (first value per story), else None."""
    if temperature is not None:
        series = pd.to_numeric(pd.Series(temperature), errors="coerce").astype(float)
        series.index = series.index.astype(str)
        if series.index.duplicated().any():
            repeated = sorted(set(series.index[series.index.duplicated()]))[:5]
            raise ValueError(f"temperature: story id(s) {', '.join(map(repr, repeated))} appear more than once")
        return series
    if "temperature" in human.columns:
        return pd.to_numeric(human.groupby(STORY)["temperature"].first(), errors="coerce").astype(float)
    return None


def _mixed_beta(ratings: pd.DataFrame, criterion: str, who: str, confidence: float,
                notes: list[str]) -> tuple[float, float, float]:
    try:
        fit = fit_mixed_model(ratings, criterion, "temperature", participant=RATER, story=STORY,
                              confidence=confidence)
    except (ValueError, np.linalg.LinAlgError) as error:
        notes.append(f"{who} mixed model failed: {str(error).splitlines()[0]}")
        return NAN, NAN, NAN
    if fit["warnings"]:
        notes.append(f"{who} mixed model: {fit['warnings']}")
    return fit["beta"], fit["ci_low"], fit["ci_high"]


def _ols_beta(ratings: pd.DataFrame, criterion: str, confidence: float,
              notes: list[str]) -> tuple[float, float, float]:
    frame = ratings.rename(columns={criterion: "y", "temperature": "x"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = smf.ols("y ~ x", frame).fit()
        low, high = result.conf_int(alpha=1 - confidence).loc["x"]
    messages = sorted({str(w.message).splitlines()[0] for w in caught})
    if messages:
        notes.append(f"judge OLS: {'; '.join(messages)}")
    return float(result.params["x"]), float(low), float(high)


def _temperature_effects(
    human_ratings: pd.DataFrame, judge_ratings: pd.DataFrame, criterion: str, temperature: pd.Series | None,
    confidence: float,
) -> tuple[dict, list[str]]:
    """Slope of the criterion on temperature: humans by a mixed model (random intercept per participant);
    the judge by the same with a random intercept per repeat, or OLS when it rated each story once."""
    row = {f"beta_{who}{part}": NAN for who in ("humans", "judge") for part in ("", "_ci_low", "_ci_high")}
    stories = human_ratings[STORY].unique()
    known = temperature.reindex(stories).dropna() if temperature is not None else pd.Series(dtype=float)
    if known.empty:
        return {**row, "judge_beta_model": "none: temperature unknown"}, []
    if (only := _one_value(known)) is not None:
        reason = f"temperature is {only:g} for every compared story"
        return {**row, "judge_beta_model": f"none: {reason}"}, [f"{reason}: no temperature effect"]

    notes: list[str] = []
    humans = human_ratings.assign(temperature=human_ratings[STORY].map(temperature))
    row["beta_humans"], row["beta_humans_ci_low"], row["beta_humans_ci_high"] = _mixed_beta(
        humans, criterion, "human", confidence, notes)

    judge = judge_ratings.assign(temperature=judge_ratings[STORY].map(temperature)).dropna(subset=["temperature"])
    if (only := _one_value(judge[criterion])) is not None:
        return {**row, "judge_beta_model": f"none: the judge gave one value ({only:g}) to every story"}, notes
    if judge[RATER].nunique() >= 2:
        model = BETA_MIXED
        beta = _mixed_beta(judge, criterion, "judge", confidence, notes)
    else:
        model = BETA_OLS
        beta = _ols_beta(judge, criterion, confidence, notes)
    row["beta_judge"], row["beta_judge_ci_low"], row["beta_judge_ci_high"] = beta
    return {**row, "judge_beta_model": model}, notes


# --- the table ----------------------------------------------------------------------------------------------

def _criterion_row(
    human: pd.DataFrame, judge: pd.DataFrame, human_means: pd.Series, judge_means: pd.Series, criterion: str,
    judge_rater: str, temperature: pd.Series | None, confidence: float, n_resamples: int, seed: int,
) -> dict:
    rated_by_humans = human_means.dropna().index
    judge_on_those = judge[judge[STORY].isin(rated_by_humans)]
    compared = rated_by_humans.intersection(judge_means.dropna().index)
    x, y = human_means.loc[compared], judge_means.loc[compared]
    row = {
        "criterion": criterion, "n_stories": len(compared),
        # Both counts are over the stories the humans rated: the judge's ratings there and its failures there.
        "n_judge_ratings": int(judge_on_those[criterion].notna().sum()),
        "n_failed": int(judge_on_those[criterion].isna().sum()),
        "human_mean": float(x.mean()) if len(x) else NAN,
        "judge_mean": float(y.mean()) if len(y) else NAN,
        "bias": float((y - x).mean()) if len(x) else NAN,
    }
    if not len(compared):
        empty = {column: NAN for column in CALIBRATION_COLUMNS if column not in (*row, *JUDGE_COLUMNS)}
        return {**empty, **row, "judge_beta_model": "none: no stories rated by both",
                "notes": "no story was rated by both the humans and the judge"}

    human_ratings = human.loc[human[STORY].isin(compared), [STORY, RATER, criterion]].dropna()
    judge_ratings = judge.loc[judge[STORY].isin(compared), [STORY, RATER, criterion]].dropna()
    correlations, notes = _correlations(x, y, n_resamples, confidence, seed)
    agreement, agreement_notes = _agreement(human_ratings, y, criterion, judge_rater)
    effects, effect_notes = _temperature_effects(human_ratings, judge_ratings, criterion, temperature, confidence)
    return {**row, **correlations, **agreement, **effects, "notes": "; ".join(notes + agreement_notes + effect_notes)}


def calibration_table(
    human: pd.DataFrame,
    judge: pd.DataFrame,
    criteria: Sequence[str],
    temperature: pd.Series | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (judge, score_kind, criterion) of :data:`CALIBRATION_COLUMNS`.

    ``human``: one row per (participant, story); ``judge``: one row per (judge, score_kind, repeat, story),
    the repeat in ``participant_id``. ``temperature`` (by story_id) defaults to the humans' ``temperature``
    column; without either the beta columns are NaN. The bootstrap uses the same ``seed`` for every row.
    """
    criteria = list(criteria)
    _require_columns(human, (STORY, RATER, *criteria), "human")
    _require_columns(judge, (STORY, RATER, *JUDGE_COLUMNS, *criteria), "judge")
    human = human.assign(**{STORY: human[STORY].astype(str), RATER: human[RATER].astype(str)})
    judge = judge.assign(**{STORY: judge[STORY].astype(str), RATER: judge[RATER].astype(str)})
    story_temperature = _story_temperature(human, temperature)
    human_means = story_means(human, criteria)

    rows = []
    for (name, kind), ratings in judge.groupby(list(JUDGE_COLUMNS)):
        judge_means = story_means(ratings, criteria)
        judge_rater = f"{name} ({kind}, mean over repeats)"
        for criterion in criteria:
            row = _criterion_row(human, ratings, human_means[criterion], judge_means[criterion], criterion,
                                 judge_rater, story_temperature, confidence, n_resamples, seed)
            rows.append({"judge": name, "score_kind": kind, **row})
    table = pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
    table.attrs["confidence"] = confidence  # read by calibration_summary to name the interval
    return table


# --- the summary --------------------------------------------------------------------------------------------

def agreement_verdict(spearman_values: Sequence[float]) -> str:
    """From the median Spearman rho over criteria, sign kept: 'near zero' below 0.2, 'weak' below 0.4, else
    'moderate/strong'.

    Signed, because a judge that ranks stories opposite to the humans disagrees with them; the median,
    because one criterion that happens to correlate (31 stories give wide intervals) says little about a
    judge. An undefined correlation (the judge gave one value to every story) counts as 0: no agreement.
    """
    values = np.asarray([v if np.isfinite(v) else 0.0 for v in spearman_values], dtype=float)
    median = float(np.median(values)) if len(values) else 0.0
    if median < NEAR_ZERO_BELOW:
        return "near zero"
    if median < WEAK_BELOW:
        return "weak"
    return "moderate/strong"


def _stories_count(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low} stories" if low == high else f"{low} to {high} stories"


def calibration_summary(table: pd.DataFrame) -> str:
    """Plain sentences, one paragraph per (judge, score kind), from the numbers of :func:`calibration_table`."""
    confidence = table.attrs.get("confidence")
    interval = f"{confidence:.0%} CI" if confidence is not None else "CI"
    paragraphs = []
    for (name, kind), rows in table.groupby(list(JUDGE_COLUMNS), sort=False):
        defined = rows[rows["spearman"].notna()]
        opening = f"{name} ({kind} scores) against the human story means, {_stories_count(rows['n_stories'])}: "
        if defined.empty:
            body = f"no criterion has a defined Spearman correlation ({len(rows)} criteria)."
        else:
            excluding = defined[(defined["spearman_ci_low"] > 0) | (defined["spearman_ci_high"] < 0)]
            opposite = defined[defined["spearman_ci_high"] < 0]
            body = (f"median Spearman rho {defined['spearman'].median():.2f} over {len(defined)} of {len(rows)} "
                    f"criteria (from {defined['spearman'].min():.2f} to {defined['spearman'].max():.2f}); "
                    + (f"the {interval} excludes 0 for {', '.join(excluding['criterion'])}."
                       if len(excluding) else f"no criterion's {interval} excludes 0.")
                    + (f" For {', '.join(opposite['criterion'])} the judge ranks the stories opposite to the "
                       "humans (the whole interval is below 0)." if len(opposite) else ""))
        verdict = agreement_verdict(rows["spearman"].to_numpy(float))
        failed = int(rows["n_failed"].sum())
        failures = f" {failed} judge ratings failed (NaN), counted over all criteria." if failed else ""
        paragraphs.append(f"{opening}{body} Agreement with the humans is {verdict}.{failures}")
    return "\n\n".join(paragraphs)


# --- the figure ---------------------------------------------------------------------------------------------

@_with_style
def calibration_scatter(
    human_means: pd.DataFrame,
    judge_means: pd.DataFrame,
    criteria: Sequence[str],
    out_base: str | Path,
    title: str,
) -> list[Path]:
    """One panel per criterion: the judge's story mean (y) against the humans' (x) on the rating scale,
    the identity line dashed (points above it: the judge rates higher), Spearman rho and n in the title."""
    columns = 2 if len(criteria) > 1 else 1
    rows = math.ceil(len(criteria) / columns)
    figure, axes = _figure(rows, columns, height_in=1.65 * rows + 0.35)
    low, high = SCALE
    limits = (low - 0.15, high + 0.15)  # room for the markers of ratings at the scale ends
    for index, ax in enumerate(axes.flat):
        if index >= len(criteria):
            ax.set_visible(False)
            continue
        criterion = criteria[index]
        both = pd.concat({"human": human_means[criterion], "judge": judge_means[criterion]}, axis=1).dropna()
        rho = (stats.spearmanr(both["human"], both["judge"]).statistic
               if len(both) >= MIN_STORIES and both.nunique().min() > 1 else NAN)
        ax.plot([low, high], [low, high], linestyle="--", color="gray", linewidth=0.8, zorder=1)
        ax.scatter(both["human"], both["judge"], s=6, alpha=0.7, linewidths=0, color="tab:blue", zorder=2)
        ax.set_xlim(*limits)
        ax.set_ylim(*limits)
        ax.set_aspect("equal")
        ax.set_xticks(range(low, high + 1))
        ax.set_yticks(range(low, high + 1))
        statistic = f"ρ = {rho:.2f}" if np.isfinite(rho) else "ρ undefined"
        ax.set_title(f"{criterion.capitalize()}: {statistic}, n = {len(both)}")
        if index % columns == 0:
            ax.set_ylabel(f"Judge story mean ({low} to {high})")
        if index + columns >= len(criteria):
            ax.set_xlabel(f"Human story mean ({low} to {high})")
    figure.suptitle(title)
    return save_figure(figure, out_base)
