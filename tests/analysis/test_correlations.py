"""Correlation CIs against scipy and the Bonett-Wright formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.correlations import CORRELATION_COLUMNS, correlation_table, fisher_z_interval
from analysis.ratings import RatingsError


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    return pd.DataFrame({"x": x, "y": 0.5 * x + rng.normal(size=40), "z": rng.normal(size=40)})


def test_pearson_ci_and_p_match_scipy(data):
    table = correlation_table(data, ["x"], ["y"], confidence=0.9)
    row = table[table["method"] == "pearson"].iloc[0]
    reference = stats.pearsonr(data["x"], data["y"])
    interval = reference.confidence_interval(confidence_level=0.9)
    assert row["r"] == pytest.approx(reference.statistic)
    assert row["p"] == pytest.approx(reference.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-12)


def test_spearman_ci_uses_the_bonett_wright_standard_error(data):
    row = correlation_table(data, ["x"], ["y"]).query("method == 'spearman'").iloc[0]
    rho = stats.spearmanr(data["x"], data["y"]).statistic
    se = np.sqrt((1 + rho**2 / 2) / (40 - 3))
    expected = np.tanh(np.arctanh(rho) + np.array([-1, 1]) * 1.959963984540054 * se)
    assert row["r"] == pytest.approx(rho)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(expected), rel=1e-9)


def test_interval_edge_cases():
    assert all(np.isnan(fisher_z_interval(0.5, 3)))
    assert fisher_z_interval(1.0, 10) == (1.0, 1.0)


def test_correction_is_applied_within_each_method_and_stated(data):
    table = correlation_table(data, ["x", "z"], ["y"], correction="fdr_bh")
    assert list(table.columns) == CORRELATION_COLUMNS + ["p_adjusted", "correction"]
    for _, part in table.groupby("method"):
        assert part["correction"].iloc[0] == "Benjamini-Hochberg (false discovery rate), family of 2 tests"
        assert (part["p_adjusted"] >= part["p"] - 1e-15).all()


def test_unknown_correction_is_refused(data):
    with pytest.raises(ValueError, match="correction='sidak-ish' is not allowed"):
        correlation_table(data, ["x"], ["y"], correction="sidak-ish")


def test_constant_column_is_refused(data):
    with pytest.raises(RatingsError, match="'flat' has no variance"):
        correlation_table(data.assign(flat=2.0), ["flat"], ["y"])
