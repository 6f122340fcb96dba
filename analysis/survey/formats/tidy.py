"""``tidy``: the long ratings table itself, one row per (participant, story) rating.

Columns ``story_id, participant_id`` and the criteria; optionally
``evaluation_index``, the participant covariates, ``blinded_id`` (the id the
participant saw), ``practice`` (true for practice ratings) or ``kind``. Any
other column (the paper's ``temperature``, a setting's parameters) is passed
through to the output. This is the paper's ``survey_data_by_evaluation`` file
(its unnamed first column, a saved pandas index, is dropped) and what the
import itself writes, so a table can be re-checked or unblinded later.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.survey.files import unguard_cell
from analysis.survey.formats.base import COVARIATES, KNOWN_COLUMNS, ReadOptions, SurveyFormat, finish, require
from analysis.survey.questions import CRITERION_NAMES

REQUIRED = ("story_id", "participant_id", *CRITERION_NAMES)
TRUE = ("true", "1", "yes")


def detect(columns) -> bool:
    return set(REQUIRED) <= set(columns)


def _kind(row: pd.Series, frame: pd.DataFrame) -> str:
    if "kind" in frame:
        return row["kind"]
    if "practice" in frame:
        return "practice" if row["practice"].lower() in TRUE else "story"
    return "story"


def read(frame: pd.DataFrame, path: Path, options: ReadOptions) -> pd.DataFrame:
    require(frame, REQUIRED, path, "a tidy ratings table")
    extras = [c for c in frame.columns if c not in KNOWN_COLUMNS and c not in ("practice", "kind")]
    rows = []
    for index, row in frame.iterrows():
        story_id = unguard_cell(row["story_id"])
        rows.append({
            "source": str(path), "source_row": index + 1, "participant_id": unguard_cell(row["participant_id"]),
            "kind": _kind(row, frame), "evaluation_index": row.get("evaluation_index", ""),
            "blinded_id": unguard_cell(row["blinded_id"]) if "blinded_id" in frame else story_id,
            "story_id": story_id, **{c: row[c] for c in CRITERION_NAMES},
            **{c: unguard_cell(row[c]) for c in COVARIATES if c in frame},
            **{c: row[c] for c in ("seconds_on_page", "packet", "survey_id") if c in frame},
            **{c: row[c] for c in extras},
            "complete": True, "incomplete_reason": "",
        })
    return finish(rows)


FORMAT = SurveyFormat("tidy", "the long ratings table (story_id, participant_id, the criteria; as the import writes "
                      "it, or the paper's survey_data_by_evaluation)", detect, read)
