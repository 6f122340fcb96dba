"""Pearson and Spearman correlations with 95% confidence intervals.

CIs come from Fisher's z transform, z = atanh(r), z +/- z_crit * SE, back with tanh:

- Pearson: SE = 1 / sqrt(n - 3) (the interval scipy's ``pearsonr(...).confidence_interval()`` gives);
- Spearman: SE = sqrt((1 + rho^2 / 2) / (n - 3)), Bonett & Wright (2000,
  Psychometrika 65:23-28), which keeps coverage near nominal where the
  Pearson SE is too narrow for rank correlations.

p-values are scipy's (t-distribution for both). With ``correction`` the
p-values are adjusted within each method; the family size is in the table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.multiple_comparisons import adjust_p_values
from analysis.ratings import check_predictor_variance

CORRELATION_COLUMNS = ["x", "y", "method", "n", "r", "ci_low", "ci_high", "p", "ci_method"]
CI_METHODS = {
    "pearson": "Fisher z, SE = 1/sqrt(n-3)",
    "spearman": "Fisher z, Bonett-Wright SE = sqrt((1+rho^2/2)/(n-3))",
}


def fisher_z_interval(r: float, n: int, confidence: float = 0.95, method: str = "pearson") -> tuple[float, float]:
    """Confidence interval of a correlation by Fisher's z; NaN when n < 4."""
    if n < 4 or not np.isfinite(r):
        return float("nan"), float("nan")
    se = 1 / np.sqrt(n - 3) if method == "pearson" else np.sqrt((1 + r**2 / 2) / (n - 3))
    z_crit = stats.norm.ppf(1 - (1 - confidence) / 2)
    with np.errstate(divide="ignore"):  # |r| = 1 gives an infinite z; tanh brings it back to +/-1
        z = np.arctanh(r)
    return float(np.tanh(z - z_crit * se)), float(np.tanh(z + z_crit * se))


def correlate(data: pd.DataFrame, x: str, y: str, confidence: float = 0.95) -> list[dict]:
    """Pearson and Spearman of two columns over the rows where both are present."""
    frame = data[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
    n = len(frame)
    rows = []
    for method, test in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        if n < 3:
            r, p = float("nan"), float("nan")
        else:
            result = test(frame[x], frame[y])
            r, p = float(result.statistic), float(result.pvalue)
        low, high = fisher_z_interval(r, n, confidence, method)
        rows.append({"x": x, "y": y, "method": method, "n": n, "r": r, "ci_low": low, "ci_high": high,
                     "p": p, "ci_method": CI_METHODS[method]})
    return rows


def correlation_table(
    data: pd.DataFrame,
    xs: Sequence[str],
    ys: Sequence[str],
    confidence: float = 0.95,
    correction: str = "none",
    source: str = "data",
) -> pd.DataFrame:
    """Every x with every y, both methods; constant or empty columns are refused before any test."""
    for column in (*xs, *ys):
        check_predictor_variance(data, column, source=source)
    rows = [row for x in xs for y in ys if x != y for row in correlate(data, x, y, confidence)]
    table = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    if table.empty:
        return adjust_p_values(table, correction)
    return pd.concat([adjust_p_values(part, correction) for _, part in table.groupby("method", sort=False)],
                     ignore_index=True)
