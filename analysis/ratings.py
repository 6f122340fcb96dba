"""Load and validate a long table of human ratings.

One row per (participant, story): ``story_id, participant_id`` plus one column
per criterion (``novelty, typicality, cohesion, coherence``; names and scale
from :mod:`analysis.criteria`) and any covariates. Every check raises
:class:`RatingsError` naming the file, the row (as the 1-based data row, the
header not counted) and the column, before any model is fitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.config import AnalysisInputError
from analysis.criteria import CRITERION_NAMES, SCALE

CRITERIA = CRITERION_NAMES  # the criterion column names (analysis.criteria.CRITERIA holds their wording)
ID_COLUMNS = ("story_id", "participant_id")
SHOWN = 5  # how many offending rows or ids an error message lists


class RatingsError(AnalysisInputError):
    """A ratings table that breaks the contract."""


def _listing(values: Iterable, shown: int = SHOWN) -> str:
    values = list(values)
    text = ", ".join(repr(v) for v in values[:shown])
    return text + (f" ... ({len(values)} in all)" if len(values) > shown else "")


def _rows(index: Iterable[int]) -> str:
    """Data rows counted from 1, as a person counts them in a spreadsheet below the header."""
    return _listing([int(i) + 1 for i in index])


def read_ratings_file(path: str | Path) -> pd.DataFrame:
    """Read CSV (also ``.csv.gz``, ``.csv.tar.gz``), TSV or Parquet; ids as strings.

    A leading unnamed column (a saved pandas index, as in the paper's file) is dropped.
    """
    path = Path(path)
    if not path.exists():
        raise RatingsError(f"{path}: no such ratings file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif ".csv" in name or ".tsv" in name:
        frame = pd.read_csv(path, sep="\t" if ".tsv" in name else ",",
                            dtype={column: str for column in ID_COLUMNS})
    else:
        raise RatingsError(f"{path}: unknown ratings format; allowed: .csv (optionally compressed), .tsv, .parquet")
    first = str(frame.columns[0]) if len(frame.columns) else ""
    if first == "" or first.startswith("Unnamed: 0"):
        frame = frame.drop(columns=frame.columns[0])
    return frame.reset_index(drop=True)


def validate_ratings(
    ratings: pd.DataFrame,
    source: str = "ratings",
    criteria: Sequence[str] = CRITERIA,
    scale: tuple[float, float] = (float(SCALE[0]), float(SCALE[1])),
    known_story_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Return a clean copy (ids as str, criteria as float) or raise RatingsError.

    Checks, in order: required columns; numeric criteria; values inside the
    declared scale (missing values are allowed and dropped per model);
    duplicated (participant, story) rows; story ids absent from the run.
    """
    missing = [c for c in (*ID_COLUMNS, *criteria) if c not in ratings.columns]
    if missing:
        raise RatingsError(
            f"{source}: missing column(s) {_listing(missing)}; a ratings table needs "
            f"{', '.join((*ID_COLUMNS, *criteria))} (found: {', '.join(map(str, ratings.columns))})"
        )
    frame = ratings.reset_index(drop=True).copy()
    for column in ID_COLUMNS:
        empty = frame.index[frame[column].isna()]
        if len(empty):
            raise RatingsError(f"{source}: column {column!r} is empty in row(s) {_rows(empty)}")
        frame[column] = frame[column].astype(str).str.strip()

    low, high = scale
    for column in criteria:
        values = pd.to_numeric(frame[column], errors="coerce")
        not_numbers = frame.index[values.isna() & frame[column].notna()]
        if len(not_numbers):
            bad = frame.loc[not_numbers[0], column]
            raise RatingsError(
                f"{source}: column {column!r} has non-numeric value {bad!r} in row(s) {_rows(not_numbers)}; "
                f"allowed: numbers in [{low:g}, {high:g}] or empty"
            )
        outside = frame.index[(values < low) | (values > high) | np.isinf(values)]
        if len(outside):
            raise RatingsError(
                f"{source}: column {column!r} has value(s) {_listing(values[outside].tolist())} outside the "
                f"declared scale [{low:g}, {high:g}] in row(s) {_rows(outside)}"
            )
        frame[column] = values.astype(float)

    duplicated = frame.index[frame.duplicated(list(ID_COLUMNS), keep=False)]
    if len(duplicated):
        first = frame.loc[duplicated[0]]
        raise RatingsError(
            f"{source}: participant {first['participant_id']!r} rated story {first['story_id']!r} more than "
            f"once; duplicated (participant_id, story_id) in row(s) {_rows(duplicated)}"
        )

    if known_story_ids is not None:
        known = set(map(str, known_story_ids))
        unknown = sorted(set(frame["story_id"]) - known)
        if unknown:
            rows = frame.index[frame["story_id"].isin(unknown)]
            raise RatingsError(
                f"{source}: story id(s) {_listing(unknown)} (row(s) {_rows(rows)}) are not in the run "
                f"({len(known)} stories); were these ratings made for another run?"
            )
    return frame


def load_ratings(
    path: str | Path,
    criteria: Sequence[str] = CRITERIA,
    scale: tuple[float, float] = (float(SCALE[0]), float(SCALE[1])),
    known_story_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read and validate a ratings file; errors name the file."""
    return validate_ratings(read_ratings_file(path), str(path), criteria, scale, known_story_ids)


def check_predictor_variance(data: pd.DataFrame, predictor: str, source: str = "data") -> None:
    """Raise if a predictor is missing, entirely empty or constant: no slope can be estimated."""
    if predictor not in data.columns:
        raise RatingsError(f"{source}: predictor {predictor!r} is not a column (found: {', '.join(map(str, data.columns))})")
    values = pd.to_numeric(data[predictor], errors="coerce").dropna()
    if values.empty:
        raise RatingsError(f"{source}: predictor {predictor!r} has no numeric values")
    if values.nunique() < 2:
        raise RatingsError(
            f"{source}: predictor {predictor!r} has no variance (every value is {values.iloc[0]!r}); "
            "a slope cannot be estimated: drop it from the predictors"
        )
