"""``html``: the offline HTML survey (``participant/survey.html``) and the CSVs it downloads.

The page downloads one CSV per participant (columns ``HTML_CSV_COLUMNS`` of
:mod:`analysis.survey.html`); a folder of them imports in one go. A response is
complete when the participant rated as many packet stories as the packet holds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.survey.blinding import Survey
from analysis.survey.config import ExportConfig
from analysis.survey.files import unguard_cell
from analysis.survey.formats.base import (COVARIATES, PARTICIPANT_DIR, ReadOptions, SurveyFormat, finish,
                                          require)
from analysis.survey.html import render_survey_html
from analysis.survey.questions import CRITERION_NAMES


def detect(columns) -> bool:
    return {"survey_id", "packet", "blinded_id"} <= set(columns)


def read(frame: pd.DataFrame, path: Path, options: ReadOptions) -> pd.DataFrame:
    require(frame, ("survey_id", "participant_id", "packet", "packet_size", "kind", "position", "blinded_id",
                    *CRITERION_NAMES), path, "a CSV of the HTML survey")
    stories_seen = frame.loc[frame["kind"] == "story"].groupby("participant_id").size()
    rows = []
    for index, row in frame.iterrows():
        expected = row["packet_size"]
        seen = int(stories_seen.get(row["participant_id"], 0))
        complete = expected.isdigit() and seen == int(expected)
        rows.append({
            "source": str(path), "source_row": index + 1, "participant_id": row["participant_id"],
            "kind": row["kind"], "evaluation_index": row["position"], "blinded_id": row["blinded_id"],
            **{c: row[c] for c in CRITERION_NAMES},
            **{c: unguard_cell(row[c]) for c in COVARIATES if c in frame},
            "survey_id": row["survey_id"], "packet": row["packet"],
            "seconds_on_page": row.get("seconds_on_page", ""),
            "complete": complete,
            "incomplete_reason": "" if complete else f"{seen} of {expected} packet stories rated",
        })
    return finish(rows)


def write(survey: Survey, config: ExportConfig) -> dict[str, str]:
    return {f"{PARTICIPANT_DIR}/survey.html": render_survey_html(survey, config.title, config.completion_url,
                                                                  config.consent_text, config.slider_step)}


FORMAT = SurveyFormat("html", "CSVs downloaded from the HTML survey (one per participant)", detect, read, write)
