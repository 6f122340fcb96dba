"""Mixed models and both R^2 definitions against closed-form values.

In a balanced design where every participant sees the same predictor values,
the predictor is orthogonal to the participant intercepts, so the REML fit
has a closed form: beta is the within-participant OLS slope, the residual
variance is the within mean square (df N - G - 1), the participant variance
is (MS_between - s2_e) / m, SE(beta)^2 = s2_e / sum((x - x_group_mean)^2),
and the BLUPs shrink group mean residuals by m s2_u / (s2_e + m s2_u).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.mixed_models import (MIXED_MODEL_COLUMNS, fit_mixed_model, mixed_models_table, nakagawa_r2,
                                   paper_variances)
from analysis.ratings import RatingsError

X_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.fixture
def balanced() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for group in range(8):
        intercept = rng.normal(0, 0.8)
        for x in X_VALUES:
            rows.append({"participant_id": f"p{group}", "story_id": f"s{x}", "temperature": x,
                         "novelty": 2 + 0.5 * x + intercept + rng.normal(0, 0.5)})
    return pd.DataFrame(rows)


def _closed_form(data: pd.DataFrame) -> dict[str, float]:
    groups, m, n = data["participant_id"].nunique(), len(X_VALUES), len(data)
    y_centred = data["novelty"] - data.groupby("participant_id")["novelty"].transform("mean")
    x_centred = data["temperature"] - data.groupby("participant_id")["temperature"].transform("mean")
    beta = (x_centred * y_centred).sum() / (x_centred**2).sum()
    s2_e = ((y_centred - beta * x_centred) ** 2).sum() / (n - groups - 1)
    group_means = data.groupby("participant_id")["novelty"].mean()
    ms_between = m * ((group_means - group_means.mean()) ** 2).sum() / (groups - 1)
    s2_u = (ms_between - s2_e) / m
    var_f = np.var(beta * data["temperature"], ddof=1)
    intercept = data["novelty"].mean() - beta * data["temperature"].mean()
    blups = m * s2_u / (s2_e + m * s2_u) * (group_means - intercept - beta * data["temperature"].mean())
    fitted = intercept + beta * data["temperature"] + data["participant_id"].map(blups)
    # The paper's helper: sample variances of the conditional fitted values and residuals.
    var_f_paper, var_e_paper = np.var(fitted, ddof=1), np.var(data["novelty"] - fitted, ddof=1)
    total, total_paper = var_f + s2_u + s2_e, var_f_paper + s2_u + var_e_paper
    return {
        "beta": beta, "se": np.sqrt(s2_e / (x_centred**2).sum()), "var_residual": s2_e, "var_participant": s2_u,
        "var_fixed": var_f, "var_fixed_paper": var_f_paper, "var_residual_paper": var_e_paper,
        "r2_marginal": var_f / total, "r2_conditional": (var_f + s2_u) / total,
        "r2_marginal_paper": var_f_paper / total_paper, "r2_conditional_paper": (var_f_paper + s2_u) / total_paper,
    }


def test_mixed_model_and_both_r2_match_the_closed_form(balanced):
    row = fit_mixed_model(balanced, "novelty", "temperature")
    expected = _closed_form(balanced)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-4), key
    assert row["converged"] and row["n_obs"] == 40 and row["n_participants"] == 8 and row["n_stories"] == 5
    z = 1.959963984540054
    assert row["ci_low"] == pytest.approx(row["beta"] - z * row["se"], rel=1e-6)
    # The paper's variant counts participant variance twice, so it is always the larger.
    assert row["r2_marginal_paper"] > row["r2_marginal"]


def test_nakagawa_r2_by_hand():
    assert nakagawa_r2(1.0, 2.0, 1.0) == (0.25, 0.75)


def test_paper_variances_are_sample_variances_as_pandas():
    fitted, residuals = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.5, -0.5, 1.0, -1.0])
    # The paper called Series.var(), whose default is ddof=1.
    assert paper_variances(fitted, residuals) == (pd.Series(fitted).var(), pd.Series(residuals).var())


def test_crossed_random_effects_estimate_a_story_variance():
    rng = np.random.default_rng(2)
    story_effects = rng.normal(0, 0.7, 12)
    participant_effects = rng.normal(0, 0.7, 15)
    rows = []
    for p in range(15):
        for s in rng.choice(12, size=6, replace=False):
            x = s / 6
            rows.append({"participant_id": p, "story_id": s, "x": x,
                         "y": 1 + 0.3 * x + participant_effects[p] + story_effects[s] + rng.normal(0, 0.3)})
    data = pd.DataFrame(rows)
    crossed = fit_mixed_model(data, "y", "x", crossed=True)
    nested = fit_mixed_model(data, "y", "x")
    assert crossed["random_effects"] == "participant + story (crossed)"
    assert crossed["var_story"] > 0.1 and np.isnan(nested["var_story"])
    # With the story variance taken out of the residual, the residual variance is near the true 0.09.
    assert crossed["var_residual"] < nested["var_residual"]
    total = crossed["var_fixed"] + crossed["var_participant"] + crossed["var_story"] + crossed["var_residual"]
    assert crossed["r2_conditional"] == pytest.approx(
        (crossed["var_fixed"] + crossed["var_participant"] + crossed["var_story"]) / total)


def test_table_has_fixed_columns_and_states_the_correction(balanced):
    balanced = balanced.assign(other=balanced["temperature"] ** 2 + np.arange(len(balanced)) * 0.01)
    table = mixed_models_table(balanced, ["novelty"], ["temperature", "other"], correction="holm")
    assert list(table.columns) == MIXED_MODEL_COLUMNS + ["p_adjusted", "correction"]
    assert (table["p_adjusted"] >= table["p"]).all()
    assert table["correction"].iloc[0].startswith("Holm")


def test_a_predictor_with_no_variance_is_refused_before_fitting(balanced):
    with pytest.raises(RatingsError, match=r"predictor 'constant' has no variance"):
        mixed_models_table(balanced.assign(constant=1.0), ["novelty"], ["temperature", "constant"])
