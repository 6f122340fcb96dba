"""Descriptive statistics: per setting for metrics, per criterion for ratings."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

SETTING_SUMMARY_COLUMNS = ["setting_id", "setting", "metric", "n", "mean", "sd", "median", "min", "max"]
CRITERION_SUMMARY_COLUMNS = ["criterion", "n", "mean", "sd", "median"]


def setting_summary(
    data: pd.DataFrame, metrics: Sequence[str], setting: str = "setting_id", label: str | None = None
) -> pd.DataFrame:
    """Mean, SD (ddof=1), median, min, max and n of every metric within each setting.

    ``label`` names a column with a readable description of the setting (e.g.
    "temperature=0.7"); it is carried along, not grouped on.
    """
    rows = []
    for setting_value, group in data.groupby(setting, sort=True):
        description = group[label].iloc[0] if label else str(setting_value)
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            rows.append({
                "setting_id": setting_value, "setting": description, "metric": metric, "n": len(values),
                "mean": values.mean(), "sd": values.std(ddof=1), "median": values.median(),
                "min": values.min(), "max": values.max(),
            })
    return pd.DataFrame(rows, columns=SETTING_SUMMARY_COLUMNS)


def criterion_summary(ratings: pd.DataFrame, criteria: Sequence[str]) -> pd.DataFrame:
    """Mean and SD (ddof=1) over all ratings of each criterion, as the paper's Table 1."""
    rows = []
    for criterion in criteria:
        values = ratings[criterion].dropna()
        rows.append({"criterion": criterion, "n": len(values), "mean": values.mean(),
                     "sd": values.std(ddof=1), "median": values.median()})
    return pd.DataFrame(rows, columns=CRITERION_SUMMARY_COLUMNS)
