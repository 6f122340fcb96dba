"""The judge-human calibration statistics, checked against scipy, krippendorff, pingouin and statsmodels."""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from analysis.criteria import CRITERION_NAMES
from analysis.judge.calibration import (BETA_MIXED, BETA_OLS, CALIBRATION_COLUMNS, agreement_verdict, bootstrap_ci,
                                        calibration_scatter, calibration_summary, calibration_table, pearson,
                                        spearman, story_means)
from analysis.ratings import load_ratings

CRITERIA = list(CRITERION_NAMES)
TEMPERATURES = (0.5, 1.0, 1.5, 2.0)
N_RESAMPLES = 500


def _humans(n_stories: int = 12, n_raters: int = 3, seed: int = 0, balanced: bool = True) -> pd.DataFrame:
    """Ratings = story quality + rater offset + noise (+ a temperature effect on novelty), clipped to 1..5.
    Balanced: every rater rates every story. Otherwise each story gets n_raters of 3 * n_raters raters."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(1.5, 4.5, n_stories)
    leniency = rng.normal(0, 0.5, 3 * n_raters)  # the raters' random intercepts
    rows = []
    for s in range(n_stories):
        temperature = TEMPERATURES[s % len(TEMPERATURES)]
        raters = range(n_raters) if balanced else rng.choice(3 * n_raters, n_raters, replace=False)
        for r in raters:
            row = {"story_id": f"s{s:02d}", "participant_id": f"p{r}", "temperature": temperature}
            for c in CRITERIA:
                shift = 0.5 * temperature if c == "novelty" else 0.0
                row[c] = float(np.clip(quality[s] + shift + leniency[r] + rng.normal(0, 0.4), 1, 5))
            rows.append(row)
    return pd.DataFrame(rows)


def _judge(human: pd.DataFrame, repeats: int = 1, offset: float = 0.0, noise: float = 0.3, seed: int = 1,
           name: str = "judge:fake", kind: str = "sampled", repeat_spread: float = 0.0) -> pd.DataFrame:
    """A judge that rates each story as its human mean + offset + noise, once per repeat; each repeat
    shifted by its own N(0, repeat_spread) (a random intercept per repeat)."""
    rng = np.random.default_rng(seed)
    means = story_means(human, CRITERIA).reset_index()
    parts = []
    for r in range(repeats):
        part = means.copy()
        shift = rng.normal(0, repeat_spread) if repeat_spread else 0.0
        for c in CRITERIA:
            part[c] = part[c] + offset + shift + (rng.normal(0, noise, len(part)) if noise else 0.0)
        parts.append(part.assign(participant_id=f"{name}|rubric|r{r}", judge=name, score_kind=kind))
    return pd.concat(parts, ignore_index=True)


def _row(table: pd.DataFrame, criterion: str, judge: str | None = None, kind: str | None = None) -> pd.Series:
    rows = table[table["criterion"] == criterion]
    if judge is not None:
        rows = rows[(rows["judge"] == judge) & (rows["score_kind"] == kind)]
    assert len(rows) == 1
    return rows.iloc[0]


# --- story means and correlations ----------------------------------------------------------------------------

def test_story_means_ignore_missing_ratings():
    ratings = pd.DataFrame({"story_id": ["a", "a", "a", "b", "b"], "participant_id": ["p", "q", "r", "p", "q"],
                            "novelty": [1.0, 2.0, np.nan, 4.0, 5.0], "coherence": [2.0, 2.0, 5.0, np.nan, np.nan]})
    means = story_means(ratings, ["novelty", "coherence"])
    assert means.loc["a", "novelty"] == pytest.approx(1.5)
    assert means.loc["a", "coherence"] == pytest.approx(3.0)
    assert means.loc["b", "novelty"] == pytest.approx(4.5)
    assert np.isnan(means.loc["b", "coherence"])


def test_story_means_name_the_missing_column():
    with pytest.raises(ValueError, match="'cohesion'"):
        story_means(pd.DataFrame({"story_id": ["a"], "novelty": [1.0]}), ["novelty", "cohesion"])


def test_table_columns_and_correlations_equal_scipy_on_the_story_means():
    human = _humans(balanced=False)
    judge = _judge(human, repeats=2, noise=0.6)
    table = calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES)
    assert list(table.columns) == CALIBRATION_COLUMNS
    assert list(table["criterion"]) == CRITERIA
    human_means, judge_means = story_means(human, CRITERIA), story_means(judge, CRITERIA)
    for c in CRITERIA:
        row = _row(table, c)
        x, y = human_means[c], judge_means[c].loc[human_means.index]
        assert row["n_stories"] == 12 and row["n_judge_ratings"] == 24 and row["n_failed"] == 0
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
        assert row["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
        assert row["spearman_ci_low"] <= row["spearman"] <= row["spearman_ci_high"]
        assert row["pearson_ci_low"] <= row["pearson"] <= row["pearson_ci_high"]


def test_vectorized_statistics_equal_scipy_slice_by_slice():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 9)), rng.normal(size=(6, 9))
    x[2] = 3.0  # a constant slice: NaN, and no warning
    expected_rho = [stats.spearmanr(a, b).statistic for a, b in zip(x, y) if np.ptp(a) > 0]
    expected_r = [stats.pearsonr(a, b).statistic for a, b in zip(x, y) if np.ptp(a) > 0]
    rho, r = spearman(x, y), pearson(x, y)
    assert np.isnan(rho[2]) and np.isnan(r[2])
    assert np.delete(rho, 2) == pytest.approx(expected_rho)
    assert np.delete(r, 2) == pytest.approx(expected_r)


# --- the bootstrap -----------------------------------------------------------------------------------------------

def _correlated(n: int = 30, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + rng.normal(scale=1.0, size=n)


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic():
    x, y = _correlated()
    low, high = bootstrap_ci(x, y, spearman, n_resamples=N_RESAMPLES, confidence=0.95, seed=3)
    assert low < stats.spearmanr(x, y).statistic < high
    assert bootstrap_ci(x, y, spearman, n_resamples=N_RESAMPLES, confidence=0.95, seed=3) == (low, high)
    assert bootstrap_ci(x, y, spearman, n_resamples=N_RESAMPLES, confidence=0.95, seed=4) != (low, high)
    narrower = bootstrap_ci(x, y, spearman, n_resamples=N_RESAMPLES, confidence=0.5, seed=3)
    assert low < narrower[0] < narrower[1] < high


@pytest.mark.parametrize("statistic, scipy_statistic", [(spearman, stats.spearmanr), (pearson, stats.pearsonr)])
def test_bootstrap_ci_agrees_with_a_numpy_percentile_bootstrap(statistic, scipy_statistic):
    x, y = _correlated()
    n, resamples = len(x), 20_000
    index = np.random.default_rng(11).integers(0, n, size=(resamples, n))
    by_hand = np.array([scipy_statistic(x[i], y[i]).statistic for i in index[:4000]])  # scipy, one by one
    vectorized = statistic(x[index], y[index])  # the same statistic on all resamples at once
    assert vectorized[:4000] == pytest.approx(by_hand)
    expected = np.percentile(vectorized, [2.5, 97.5])
    low, high = bootstrap_ci(x, y, statistic, n_resamples=resamples, confidence=0.95, seed=0)
    assert low == pytest.approx(expected[0], abs=0.03)
    assert high == pytest.approx(expected[1], abs=0.03)


def test_bootstrap_ci_of_perfectly_correlated_data_is_one():
    x = np.arange(12, dtype=float)
    for statistic in (spearman, pearson):
        low, high = bootstrap_ci(x, 2 * x + 1, statistic, n_resamples=N_RESAMPLES, seed=0)
        assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


@pytest.mark.filterwarnings("error")
def test_bootstrap_leaves_out_resamples_without_a_correlation():
    # Four stories, one of them alone in its value: many resamples see one x only.
    x, y = np.array([1.0, 1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0, 4.0])
    low, high = bootstrap_ci(x, y, spearman, n_resamples=N_RESAMPLES, seed=0)
    assert np.isfinite(low) and np.isfinite(high) and -1 <= low <= high <= 1


# --- bias, agreement, temperature effects -----------------------------------------------------------------------

def test_bias_of_a_judge_one_point_above_the_humans():
    human = _humans()
    human[CRITERIA] = human[CRITERIA].clip(upper=4.0)
    table = calibration_table(human, _judge(human, repeats=2, offset=1.0, noise=0.0), CRITERIA,
                              n_resamples=N_RESAMPLES)
    means = story_means(human, CRITERIA)
    for c in CRITERIA:
        row = _row(table, c)
        assert row["bias"] == pytest.approx(1.0)
        assert row["human_mean"] == pytest.approx(means[c].mean())
        assert row["judge_mean"] == pytest.approx(means[c].mean() + 1.0)
        assert row["spearman"] == pytest.approx(1.0) and row["pearson"] == pytest.approx(1.0)


def test_failed_judgments_are_counted_and_left_out():
    human = _humans()
    judge = _judge(human, repeats=2)
    judge.loc[judge["story_id"] == "s00", "novelty"] = np.nan  # both repeats failed: story dropped
    judge.loc[(judge["story_id"] == "s01") & judge["participant_id"].str.endswith("r0"), "novelty"] = np.nan
    row = _row(calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES), "novelty")
    assert (row["n_stories"], row["n_judge_ratings"], row["n_failed"]) == (11, 21, 3)
    kept = story_means(human, CRITERIA)["novelty"].drop("s00")
    assert row["human_mean"] == pytest.approx(kept.mean())


def test_alpha_and_icc_with_the_judge_equal_krippendorff_and_pingouin():
    pingouin = pytest.importorskip("pingouin")
    human = _humans(n_stories=10, n_raters=3)  # balanced: every rater rates every story
    judge = _judge(human, repeats=2, noise=0.5)
    table = calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES)
    judge_as_rater = story_means(judge, CRITERIA).reset_index().assign(participant_id="the judge")
    with_judge = pd.concat([human, judge_as_rater], ignore_index=True)
    for c in CRITERIA:
        row = _row(table, c)
        for suffix, data in (("humans", human), ("with_judge", with_judge)):
            wide = data.pivot(index="participant_id", columns="story_id", values=c).to_numpy(float)
            expected_alpha = krippendorff.alpha(reliability_data=wide, level_of_measurement="interval")
            icc = pingouin.intraclass_corr(data, targets="story_id", raters="participant_id", ratings=c)
            icc = icc.set_index("Type")["ICC"]  # pingouin names ICC1 "ICC(1,1)" and ICC1k "ICC(1,k)"
            assert row[f"alpha_{suffix}"] == pytest.approx(expected_alpha)
            assert row[f"icc1_{suffix}"] == pytest.approx(icc["ICC(1,1)"])
            assert row[f"icc1k_{suffix}"] == pytest.approx(icc["ICC(1,k)"])


def test_human_beta_is_the_mixed_model_and_one_repeat_judge_beta_is_ols():
    human = _humans(n_stories=16, n_raters=4, balanced=False, seed=7)
    judge = _judge(human, repeats=1, noise=0.4)
    table = calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES)
    judge = judge.assign(temperature=judge["story_id"].map(human.groupby("story_id")["temperature"].first()))
    for c in CRITERIA:
        row = _row(table, c)
        mixed = smf.mixedlm(f"{c} ~ temperature", human, groups=human["participant_id"]).fit(reml=True)
        assert row["beta_humans"] == pytest.approx(mixed.fe_params["temperature"], rel=1e-6)
        assert (row["beta_humans_ci_low"], row["beta_humans_ci_high"]) == pytest.approx(
            tuple(mixed.conf_int(alpha=0.05).loc["temperature"]), rel=1e-6)
        ols = smf.ols(f"{c} ~ temperature", judge).fit()
        assert row["judge_beta_model"] == BETA_OLS
        assert row["beta_judge"] == pytest.approx(ols.params["temperature"])
        assert (row["beta_judge_ci_low"], row["beta_judge_ci_high"]) == pytest.approx(
            tuple(ols.conf_int(alpha=0.05).loc["temperature"]))
    assert _row(table, "novelty")["beta_humans"] > 0  # the effect built into _humans


def test_repeated_judge_beta_has_a_random_intercept_per_repeat():
    human = _humans(n_stories=16, seed=8)
    judge = _judge(human, repeats=4, noise=0.5, repeat_spread=0.5, seed=2)
    row = _row(calibration_table(human, judge, ["novelty"], n_resamples=N_RESAMPLES), "novelty")
    judge = judge.assign(temperature=judge["story_id"].map(human.groupby("story_id")["temperature"].first()))
    mixed = smf.mixedlm("novelty ~ temperature", judge, groups=judge["participant_id"]).fit(reml=True)
    assert row["judge_beta_model"] == BETA_MIXED
    assert row["beta_judge"] == pytest.approx(mixed.fe_params["temperature"], rel=1e-6)


def test_temperature_given_as_a_series_replaces_the_column():
    human = _humans(n_stories=12)
    temperature = pd.Series({f"s{s:02d}": float(s) for s in range(12)})
    table = calibration_table(human.drop(columns="temperature"), _judge(human), ["novelty"],
                              temperature=temperature, n_resamples=N_RESAMPLES)
    frame = human.assign(temperature=human["story_id"].map(temperature))
    mixed = smf.mixedlm("novelty ~ temperature", frame, groups=frame["participant_id"]).fit(reml=True)
    assert _row(table, "novelty")["beta_humans"] == pytest.approx(mixed.fe_params["temperature"], rel=1e-6)


@pytest.mark.parametrize("temperature, reason", [(1.0, "temperature is 1 for every compared story"),
                                                 (None, "temperature unknown")])
def test_constant_or_unknown_temperature_gives_no_betas(temperature, reason):
    human = _humans()
    human = human.assign(temperature=temperature) if temperature is not None else human.drop(columns="temperature")
    table = calibration_table(human, _judge(human, repeats=2), CRITERIA, n_resamples=N_RESAMPLES)
    beta_columns = [c for c in CALIBRATION_COLUMNS if c.startswith("beta_")]
    assert table[beta_columns].isna().all().all()
    assert (table["judge_beta_model"] == f"none: {reason}").all()
    assert table["spearman"].notna().all()


@pytest.mark.filterwarnings("error")
def test_a_judge_that_always_answers_three_gives_undefined_correlations_with_a_note():
    human = _humans()
    judge = _judge(human, repeats=2).assign(**{c: 3.0 for c in CRITERIA})
    table = calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES)
    correlation_columns = [c for c in CALIBRATION_COLUMNS if c.startswith(("spearman", "pearson"))]
    assert table[correlation_columns].isna().all().all()
    assert table["notes"].str.contains("judge gave one value (3) to every story: correlation undefined",
                                       regex=False).all()
    assert table["beta_judge"].isna().all() and table["beta_humans"].notna().all()
    assert table["alpha_with_judge"].notna().all() and table["n_stories"].eq(12).all()
    assert "near zero" in calibration_summary(table)


# --- the summary ------------------------------------------------------------------------------------------------

def _summary_table(rhos: list[float], ci_lows: list[float] | None = None) -> pd.DataFrame:
    ci_lows = ci_lows if ci_lows is not None else [r - 0.5 for r in rhos]
    table = pd.DataFrame({
        "judge": "judge:tiny", "score_kind": "expected", "criterion": CRITERIA[:len(rhos)], "n_stories": 31,
        "n_failed": 0, "spearman": rhos, "spearman_ci_low": ci_lows, "spearman_ci_high": [r + 0.3 for r in rhos],
    })
    table.attrs["confidence"] = 0.95
    return table


@pytest.mark.parametrize("rhos, verdict", [
    ([0.1, -0.15, 0.05, 0.19], "near zero"),
    ([np.nan, np.nan, np.nan, np.nan], "near zero"),
    ([0.1, np.nan, 0.35, -0.2], "near zero"),  # median of -0.2, 0 (undefined), 0.1, 0.35 is 0.05
    ([0.1, 0.2, -0.45, 0.3], "near zero"),  # a strong negative correlation is disagreement, not agreement
    ([-0.5, -0.6, -0.45, -0.7], "near zero"),
    ([0.25, 0.3, 0.35, 0.1], "weak"),
    ([0.1, 0.45, 0.5, 0.6], "moderate/strong"),
    ([0.7, 0.8, 0.6, 0.9], "moderate/strong"),
])
def test_summary_verdict_follows_the_median_signed_correlation(rhos, verdict):
    summary = calibration_summary(_summary_table(rhos))
    assert agreement_verdict(rhos) == verdict
    assert f"Agreement with the humans is {verdict}." in summary
    assert "judge:tiny (expected scores)" in summary and "31 stories" in summary


def test_summary_reports_the_median_and_the_intervals_that_exclude_zero():
    summary = calibration_summary(_summary_table([0.1, 0.5, 0.3, 0.7], ci_lows=[-0.2, 0.1, -0.1, 0.4]))
    assert "median Spearman rho 0.40 over 4 of 4 criteria" in summary
    assert "the 95% CI excludes 0 for typicality, coherence." in summary
    none_excluded = calibration_summary(_summary_table([0.1, 0.05], ci_lows=[-0.2, -0.3]))
    assert "no criterion's 95% CI excludes 0." in none_excluded
    opposite = calibration_summary(_summary_table([-0.6, 0.1], ci_lows=[-0.9, -0.3]))  # highs: -0.3, 0.4
    assert "For novelty the judge ranks the stories opposite to the humans" in opposite


# --- the figure and the paper's data ----------------------------------------------------------------------------

def test_scatter_writes_png_and_pdf(tmp_path):
    human = _humans()
    judge = _judge(human, repeats=2)
    judge.loc[judge["story_id"] == "s00", "cohesion"] = np.nan
    written = calibration_scatter(story_means(human, CRITERIA), story_means(judge, CRITERIA), CRITERIA,
                                  tmp_path / "calibration", "judge:fake (sampled)")
    assert [p.name for p in written] == ["calibration.png", "calibration.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_calibration_on_the_paper_ratings_with_a_noisy_judge(paper_dir, tmp_path):
    human = load_ratings(paper_dir / "survey_data_by_evaluation.csv.tar.gz")
    judge = _judge(human, repeats=2, noise=0.3, name="judge:noisy", kind="expected")
    judge[CRITERIA] = judge[CRITERIA].clip(1, 5)
    table = calibration_table(human, judge, CRITERIA, n_resamples=N_RESAMPLES)
    assert (table["n_stories"] == 31).all()
    assert (table["spearman"] > 0).all() and (table["spearman_ci_low"] > 0).all()
    assert (table["judge_beta_model"] == BETA_MIXED).all() and table["beta_humans"].notna().all()
    assert "Agreement with the humans is moderate/strong." in calibration_summary(table)
    written = calibration_scatter(story_means(human, CRITERIA), story_means(judge, CRITERIA), CRITERIA,
                                  tmp_path / "paper_calibration", "judge:noisy (expected), paper ratings")
    assert all(p.exists() for p in written)
