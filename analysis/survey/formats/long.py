"""``long``: ``participant/packets.csv``, one row per (participant, story shown), filled in.

For any survey platform: the export writes the rows with empty rating columns
(see :mod:`analysis.survey.export_csv`); the same file with the ratings filled
in imports back.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.survey.blinding import Survey
from analysis.survey.config import ExportConfig
from analysis.survey.export_csv import packets_csv
from analysis.survey.files import unguard_cell
from analysis.survey.formats.base import (COVARIATES, PARTICIPANT_DIR, ReadOptions, SurveyFormat, finish,
                                          require)
from analysis.survey.questions import CRITERION_NAMES


def detect(columns) -> bool:
    return {"participant", "blinded_id"} <= set(columns)


def read(frame: pd.DataFrame, path: Path, options: ReadOptions) -> pd.DataFrame:
    require(frame, ("participant", "position", "blinded_id", *CRITERION_NAMES), path, "the long packets CSV")
    rows = []
    for index, row in frame.iterrows():
        rows.append({
            "source": str(path), "source_row": index + 1, "participant_id": row["participant"],
            "kind": row["kind"] if "kind" in frame else "story", "evaluation_index": row["position"],
            "blinded_id": row["blinded_id"], **{c: row[c] for c in CRITERION_NAMES},
            **{c: unguard_cell(row[c]) for c in COVARIATES if c in frame},
            "complete": True, "incomplete_reason": "",
        })
    return finish(rows)


def write(survey: Survey, config: ExportConfig) -> dict[str, str]:
    return {f"{PARTICIPANT_DIR}/packets.csv": packets_csv(survey)}


FORMAT = SurveyFormat("long", "the long packets CSV (packets.csv) with the rating columns filled in",
                      detect, read, write)
