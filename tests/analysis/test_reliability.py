"""Cronbach's alpha, ICC and Krippendorff's alpha against pingouin, textbook values and hand computation."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import reliability
from analysis.reliability import (cronbach_alpha, icc_oneway, krippendorff_interval,
                                  krippendorff_interval_closed_form, reliability_table)

pingouin = pytest.importorskip("pingouin")


def _long(wide: np.ndarray) -> pd.DataFrame:
    rows = [{"subject": s, "item": f"i{i}", "score": wide[s, i]}
            for s in range(wide.shape[0]) for i in range(wide.shape[1]) if np.isfinite(wide[s, i])]
    return pd.DataFrame(rows)


def test_cronbach_alpha_matches_the_textbook_formula_on_complete_data():
    wide = np.array([[4, 5, 4, 3], [2, 3, 3, 2], [5, 5, 4, 5], [3, 2, 3, 3], [4, 4, 5, 4.0]])
    k = wide.shape[1]
    expected = k / (k - 1) * (1 - wide.var(axis=0, ddof=1).sum() / wide.sum(axis=1).var(ddof=1))
    alpha, _ = cronbach_alpha(_long(wide), "item", "score", "subject")
    assert alpha == pytest.approx(expected, rel=1e-12)


def test_cronbach_alpha_matches_pingouin_on_its_textbook_dataset():
    data = pingouin.read_dataset("cronbach_alpha")
    alpha, (low, high) = cronbach_alpha(data, items="Items", scores="Scores", subject="Subj")
    # The value printed in pingouin's documentation for this dataset.
    assert alpha == pytest.approx(0.5917188485995826, rel=1e-9)
    assert (round(low, 3), round(high, 3)) == (0.195, 0.84)


def test_cronbach_alpha_matches_pingouin_with_missing_cells():
    rng = np.random.default_rng(0)
    wide = rng.normal(3, 1, size=(12, 5)) + rng.normal(0, 1, size=(12, 1))
    wide[rng.random(wide.shape) < 0.3] = np.nan
    data = _long(wide)
    ours = cronbach_alpha(data, "item", "score", "subject")
    theirs = pingouin.cronbach_alpha(data, items="item", scores="score", subject="subject")
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    assert np.allclose(np.round(ours[1], 3), theirs[1])


def test_cronbach_alpha_matches_pingouin_on_the_paper_data(paper_dir):
    ratings = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0)
    for criterion in ("novelty", "typicality", "cohesion", "coherence"):
        ours, _ = cronbach_alpha(ratings, "story_id", criterion, "participant_id")
        theirs, _ = pingouin.cronbach_alpha(ratings, items="story_id", scores=criterion, subject="participant_id")
        assert ours == pytest.approx(theirs, rel=1e-12), criterion


def test_icc_equals_pingouin_icc1_on_balanced_data():
    data = pingouin.read_dataset("icc")  # 8 wines (targets) x 4 judges, complete
    ours = icc_oneway(data, targets="Wine", ratings="Scores")
    theirs = pingouin.intraclass_corr(data, targets="Wine", raters="Judge", ratings="Scores").set_index("Type")
    assert ours["icc1"] == pytest.approx(theirs.loc["ICC(1,1)", "ICC"], rel=1e-10)
    assert ours["icc1k"] == pytest.approx(theirs.loc["ICC(1,k)", "ICC"], rel=1e-10)
    assert ours["icc_f"] == pytest.approx(theirs.loc["ICC(1,1)", "F"], rel=1e-10)
    assert [round(ours["icc1_ci_low"], 2), round(ours["icc1_ci_high"], 2)] == list(theirs.loc["ICC(1,1)", "CI95"])
    assert [round(ours["icc1k_ci_low"], 2), round(ours["icc1k_ci_high"], 2)] == list(theirs.loc["ICC(1,k)", "CI95"])


def test_icc_unbalanced_matches_the_anova_formula_by_hand():
    groups = {"a": [1.0, 2.0, 2.0], "b": [4.0, 5.0], "c": [3.0, 3.0, 4.0, 2.0]}
    data = pd.DataFrame([{"story": g, "r": v} for g, values in groups.items() for v in values])
    n_i = np.array([3, 2, 4.0])
    means = np.array([5 / 3, 4.5, 3.0])
    grand = data["r"].mean()
    msb = (n_i * (means - grand) ** 2).sum() / 2
    msw = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in groups.values()) / (9 - 3)
    n0 = (9 - (n_i**2).sum() / 9) / 2
    result = icc_oneway(data, "story", "r")
    assert result["icc1"] == pytest.approx((msb - msw) / (msb + (n0 - 1) * msw), rel=1e-12)
    assert result["icc1k"] == pytest.approx((msb - msw) / msb, rel=1e-12)


def _krippendorff_by_hand(wide: np.ndarray) -> float:
    """Interval alpha = 1 - D_o / D_e over pairable values (units with at least two values)."""
    units = [column[np.isfinite(column)] for column in wide.T]
    units = [u for u in units if len(u) >= 2]
    values = np.concatenate(units)
    n = len(values)
    observed = sum(((u[:, None] - u[None, :]) ** 2).sum() / (len(u) - 1) for u in units) / n
    expected = ((values[:, None] - values[None, :]) ** 2).sum() / (n * (n - 1))
    return 1 - observed / expected


def test_krippendorff_interval_matches_hand_computation_with_missing_cells():
    wide = np.array([[1, 2, 3, 3, np.nan], [1, 2, 4, np.nan, 5], [np.nan, 3, 3, 2, 5.0]])  # raters x stories
    data = pd.DataFrame([{"rater": r, "story": s, "v": wide[r, s]}
                         for r, s in itertools.product(range(3), range(5)) if np.isfinite(wide[r, s])])
    assert krippendorff_interval(data, "story", "v", "rater") == pytest.approx(_krippendorff_by_hand(wide), rel=1e-9)


def test_reliability_table_has_fixed_columns_and_one_row_per_criterion(paper_dir):
    ratings = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0)
    table = reliability_table(ratings, ["novelty", "coherence"])
    assert list(table["criterion"]) == ["novelty", "coherence"]
    assert table["n_ratings"].tolist() == [180, 180]
    assert table[["icc1", "krippendorff_alpha"]].notna().all().all()


def test_krippendorff_closed_form_equals_the_package_on_sparse_continuous_ratings(monkeypatch):
    rng = np.random.default_rng(7)
    wide = rng.normal(3, 1, size=(15, 40)) + rng.normal(0, 1, size=(1, 40))  # raters x stories
    wide[rng.random(wide.shape) < 0.8] = np.nan
    data = pd.DataFrame([{"rater": r, "story": s, "v": wide[r, s]}
                         for r, s in itertools.product(range(15), range(40)) if np.isfinite(wide[r, s])])
    by_package = krippendorff_interval(data, "story", "v", "rater")
    monkeypatch.setattr(reliability, "KRIPPENDORFF_PACKAGE_MAX_CELLS", 0)
    assert krippendorff_interval(data, "story", "v", "rater") == pytest.approx(by_package, rel=1e-9)
    assert krippendorff_interval_closed_form(wide) == pytest.approx(_krippendorff_by_hand(wide), rel=1e-12)
