"""Agreement between raters: Cronbach's alpha (as the paper), ICC and Krippendorff's alpha.

The survey design is sparse: each participant rates a few stories and each
story is rated by a few participants. The paper computed Cronbach's alpha with
pingouin on the long table, stories as items and participants as subjects,
which pivots to a mostly empty participant x story matrix and uses pairwise
covariances. We reproduce that exactly (and test against pingouin), and put
two statistics beside it that are defined for such designs:

- ICC(1) and ICC(1,k): one-way random effects, stories as targets, ratings
  nested in stories (different raters per story), from the unbalanced one-way
  ANOVA with the average group size n0 (Shrout & Fleiss 1979, case 1;
  McGraw & Wong 1996). With balanced data it equals pingouin's ICC1/ICC1k.
- Krippendorff's alpha (interval), which allows missing cells by design.
"""

from __future__ import annotations

from typing import Sequence

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats

RELIABILITY_COLUMNS = [
    "criterion", "n_subjects", "n_items", "n_ratings",
    "cronbach_alpha", "cronbach_ci_low", "cronbach_ci_high",
    "icc1", "icc1_ci_low", "icc1_ci_high", "icc1k", "icc1k_ci_low", "icc1k_ci_high", "icc_f", "icc_p",
    "krippendorff_alpha",
]


def cronbach_alpha(
    data: pd.DataFrame, items: str, scores: str, subject: str, confidence: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """Cronbach's alpha of a long table, pairwise-complete covariances.

    Hand-written rather than calling pingouin (a test-only dependency) so the
    analysis does not pull it in; the arithmetic is pingouin 0.5-0.7's
    ``cronbach_alpha(nan_policy="pairwise")`` step for step, and the tests
    compare the two. The CI is Feldt's F-based interval, as pingouin's.
    """
    wide = data.pivot(index=subject, columns=items, values=scores)
    n_subjects, n_items = wide.shape
    if n_items < 2 or n_subjects < 2:
        raise ValueError(f"Cronbach's alpha of {scores!r} needs at least 2 items and 2 subjects "
                         f"(got {n_items} items, {n_subjects} subjects)")
    covariance = wide.cov()  # pairwise complete; pairs seen by fewer than 2 subjects are NaN
    # NaN entries are skipped by DataFrame.sum, as in pingouin.
    alpha = (n_items / (n_items - 1)) * (1 - np.trace(covariance) / covariance.sum().sum())
    tail = 1 - confidence
    df1 = n_subjects - 1
    df2 = df1 * (n_items - 1)
    low = 1 - (1 - alpha) * stats.f.isf(tail / 2, df1, df2)
    high = 1 - (1 - alpha) * stats.f.isf(1 - tail / 2, df1, df2)
    return float(alpha), (float(low), float(high))


def icc_oneway(
    data: pd.DataFrame, targets: str, ratings: str, confidence: float = 0.95
) -> dict[str, float]:
    """One-way random-effects ICC(1) and ICC(1,k) for unbalanced data.

    ``targets`` are the things rated (stories); each target may have its own
    raters and its own number of ratings. k in ICC(1,k) is n0, the average
    number of ratings per target adjusted for imbalance.
    """
    frame = data[[targets, ratings]].dropna()
    groups = frame.groupby(targets)[ratings]
    sizes = groups.size().to_numpy(dtype=float)
    means = groups.mean().to_numpy()
    n_targets, n_total = len(sizes), sizes.sum()
    if n_targets < 2 or n_total <= n_targets:
        raise ValueError(f"ICC of {ratings!r} needs at least 2 targets and more ratings than targets")
    grand_mean = frame[ratings].mean()
    ss_between = float((sizes * (means - grand_mean) ** 2).sum())
    ss_within = float(((frame[ratings] - groups.transform("mean")) ** 2).sum())
    df_between, df_within = n_targets - 1, n_total - n_targets
    ms_between, ms_within = ss_between / df_between, ss_within / df_within
    n0 = (n_total - (sizes**2).sum() / n_total) / df_between

    f_value = ms_between / ms_within
    tail = 1 - confidence
    f_low = f_value / stats.f.ppf(1 - tail / 2, df_between, df_within)
    f_high = f_value * stats.f.ppf(1 - tail / 2, df_within, df_between)
    return {
        "icc1": (ms_between - ms_within) / (ms_between + (n0 - 1) * ms_within),
        "icc1_ci_low": (f_low - 1) / (f_low + n0 - 1),
        "icc1_ci_high": (f_high - 1) / (f_high + n0 - 1),
        "icc1k": (ms_between - ms_within) / ms_between,
        "icc1k_ci_low": 1 - 1 / f_low,
        "icc1k_ci_high": 1 - 1 / f_high,
        "icc_f": f_value,
        "icc_p": float(stats.f.sf(f_value, df_between, df_within)),
        "icc_k": n0,
    }


# The krippendorff package builds a units x values x values coincidence array; with continuous
# slider ratings nearly every value is distinct, so a 700-story run would need ~24 GB. Above this
# many array cells we use the exact closed form for the interval metric instead (same number).
KRIPPENDORFF_PACKAGE_MAX_CELLS = 20_000_000


def krippendorff_interval_closed_form(wide: np.ndarray) -> float:
    """Interval alpha = 1 - D_o / D_e over pairable values, in O(n).

    Hand-written because the package's memory grows with the square of the number of distinct
    values. Uses sum_{i != j} (v_i - v_j)^2 = 2 (m * sum v^2 - (sum v)^2) within each unit
    (D_o, weighted 1 / (m_u - 1)) and over all pairable values (D_e) (Krippendorff 2011,
    "Computing Krippendorff's alpha-reliability", section on the interval metric).
    """
    units = [column[np.isfinite(column)] for column in np.asarray(wide, dtype=float).T]
    units = [unit for unit in units if len(unit) >= 2]
    if not units:
        return float("nan")
    values = np.concatenate(units)
    n = len(values)
    observed = sum(2 * (len(u) * (u**2).sum() - u.sum() ** 2) / (len(u) - 1) for u in units) / n
    expected = 2 * (n * (values**2).sum() - values.sum() ** 2) / (n * (n - 1))
    return float(1 - observed / expected)


def krippendorff_interval(data: pd.DataFrame, items: str, scores: str, subject: str) -> float:
    """Krippendorff's alpha, interval metric; raters are rows, units (stories) columns, NaN = not rated."""
    wide = data.pivot(index=subject, columns=items, values=scores).to_numpy(dtype=float)
    distinct = len(np.unique(wide[np.isfinite(wide)]))
    if wide.shape[1] * distinct**2 > KRIPPENDORFF_PACKAGE_MAX_CELLS:
        return krippendorff_interval_closed_form(wide)
    return float(krippendorff.alpha(reliability_data=wide, level_of_measurement="interval"))


def reliability_table(
    ratings: pd.DataFrame,
    criteria: Sequence[str],
    items: str = "story_id",
    subject: str = "participant_id",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per criterion with the three reliability statistics and their CIs."""
    rows = []
    for criterion in criteria:
        frame = ratings[[items, subject, criterion]].dropna()
        alpha, (low, high) = cronbach_alpha(frame, items, criterion, subject, confidence)
        icc = icc_oneway(frame, items, criterion, confidence)
        rows.append({
            "criterion": criterion,
            "n_subjects": frame[subject].nunique(),
            "n_items": frame[items].nunique(),
            "n_ratings": len(frame),
            "cronbach_alpha": alpha, "cronbach_ci_low": low, "cronbach_ci_high": high,
            **{key: value for key, value in icc.items() if key != "icc_k"},
            "krippendorff_alpha": krippendorff_interval(frame, items, criterion, subject),
        })
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)
