"""``qualtrics``: the Qualtrics survey (``participant/qualtrics.txt``) and its wide response export.

The export has one row per participant, in either layout: the paper's
(``{k}_{Criterion}_1`` rated the story in ``story_id_{k-1}``) or this
package's (``P03_2_<blinded id>_{Criterion}_1``, from the question ids of
:mod:`analysis.survey.qualtrics`). Up to two metadata rows below the header
(question texts, ``{"ImportId": ...}``) are skipped; the spreadsheet guard
apostrophe (``'-nc7``) is removed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from analysis.survey.blinding import Survey
from analysis.survey.config import ExportConfig, SurveyError
from analysis.survey.files import unguard_cell
from analysis.survey.formats.base import (PARTICIPANT_DIR, RESEARCHER_DIR, ReadOptions, SurveyFormat, finish,
                                          normalise, require)
from analysis.survey.qualtrics import qualtrics_setup_notes, qualtrics_survey
from analysis.survey.questions import CRITERIA, CRITERION_NAMES

# Normalised Qualtrics column -> covariate (the paper's names and this package's question ids).
QUALTRICS_COVARIATES = {
    "gen_ai_familiarity_1": "genai_familiarity", "genai_familiarity_1": "genai_familiarity",
    "gen_ai_comfort_1": "genai_comfort", "genai_comfort_1": "genai_comfort",
    "story_writing": "story_writing", "story_reviewing": "story_reviewing",
    "eval_approach": "evaluation_approach",
}
PARTICIPANT_COLUMNS = ("RandomID", "PROLIFIC_PID", "ResponseId")
_CRITERIA_PATTERN = "|".join(c.label for c in CRITERIA)


def detect(columns) -> bool:
    pattern = re.compile(rf"_({_CRITERIA_PATTERN})(_practice)?_1$", re.IGNORECASE)
    return "ResponseId" in columns or any(pattern.search(c) for c in columns)


def _drop_metadata_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Skip Qualtrics' question-text and ImportId rows (up to two, right below the header)."""
    dropped = 0
    for _, row in frame.head(2).iterrows():
        values = [str(v) for v in row.values]
        is_import_ids = any(v.startswith('{"ImportId"') for v in values)
        is_question_texts = row.get("ResponseId") == "Response ID" or row.get("StartDate") == "Start Date"
        if not (is_import_ids or is_question_texts):
            break
        dropped += 1
    return frame.iloc[dropped:], dropped


def _participant_column(frame: pd.DataFrame, path: Path, wanted: str | None) -> str:
    if wanted is not None:
        require(frame, (wanted,), path, f"a Qualtrics export (participant_column={wanted})")
        return wanted
    for column in PARTICIPANT_COLUMNS:
        if column in frame.columns:
            return column
    raise SurveyError(f"{path}: no participant id column; expected one of {', '.join(PARTICIPANT_COLUMNS)} "
                      "or name it with participant_column=")


def _response_finished(row: pd.Series) -> tuple[bool, str]:
    finished = str(row.get("Finished", "")).strip().lower()
    if finished in ("false", "0"):
        return False, f"Finished={row['Finished']} (Progress={row.get('Progress', '?')})"
    return True, ""


def _rating_columns(frame: pd.DataFrame) -> tuple[dict, dict]:
    """Map rating columns to (kind, position, blinded id or None, packet or None, criterion)."""
    paper = re.compile(rf"^(\d+)_({_CRITERIA_PATTERN})(_Practice)?_1$", re.IGNORECASE)
    ours = re.compile(rf"^(P\d+|Practice)_(\d+)_([A-Za-z0-9]+)_({_CRITERIA_PATTERN})_1$", re.IGNORECASE)
    paper_columns, our_columns = {}, {}
    for column in frame.columns:
        name = re.sub(r"\s+", "_", column.strip())
        if match := paper.match(name):
            kind = "practice" if match.group(3) else "story"
            paper_columns[column] = (kind, int(match.group(1)), match.group(2).lower())
        elif match := ours.match(name):
            packet = match.group(1)
            kind = "practice" if packet.lower() == "practice" else "story"
            our_columns[column] = (kind, int(match.group(2)), match.group(3), packet.upper(), match.group(4).lower())
    return paper_columns, our_columns


def _covariates(row: pd.Series, normalised: dict[str, str]) -> dict:
    values = {}
    for key, covariate in QUALTRICS_COVARIATES.items():
        if key in normalised and covariate not in values:
            values[covariate] = unguard_cell(row[normalised[key]])
    return values


def read(frame: pd.DataFrame, path: Path, options: ReadOptions) -> pd.DataFrame:
    frame, skipped = _drop_metadata_rows(frame)
    participant = _participant_column(frame, path, options.participant_column)
    paper_columns, our_columns = _rating_columns(frame)
    if not paper_columns and not our_columns:
        raise SurveyError(f"{path}: no rating columns; expected {{k}}_Novelty_1 ... (with story_id_{{k-1}}) or "
                          "P01_1_<id>_Novelty_1 ... as written by this package's qualtrics.txt")
    normalised = {normalise(c): c for c in frame.columns}
    rows = []
    for index, row in frame.iterrows():
        finished, reason = _response_finished(row)
        base = {"source": str(path), "source_row": index + 1, "participant_id": unguard_cell(row[participant]),
                **_covariates(row, normalised)}
        shown: dict[tuple, dict] = {}
        # The paper's layout: position k rated the story named in story_id_{k-1}.
        for column, (kind, position, criterion) in paper_columns.items():
            id_column = f"{'practice_' if kind == 'practice' else ''}story_id_{position - 1}"
            if id_column not in frame.columns:
                raise SurveyError(f"{path}: column {column} has no matching {id_column} column naming the story")
            entry = shown.setdefault((kind, position), {"blinded_id": unguard_cell(row[id_column])})
            entry[criterion] = row[column]
        # This package's layout: one block per packet; only the respondent's packet has answers.
        answered = {packet for column, (_, _, _, packet, _) in our_columns.items()
                    if packet != "PRACTICE" and row[column] != ""}
        if len(answered) > 1:
            raise SurveyError(f"{path}: row {index + 1} has answers in several packets "
                              f"({', '.join(sorted(answered))}); each respondent should see one packet block")
        for column, (kind, position, blinded_id, packet, criterion) in our_columns.items():
            if kind == "story" and packet not in answered:
                continue
            entry = shown.setdefault((kind, position), {"blinded_id": blinded_id, "packet": packet})
            entry[criterion] = row[column]
        if our_columns and not answered:
            finished, reason = False, reason or "no packet block answered"
        for (kind, position), entry in sorted(shown.items(), key=lambda item: (item[0][0] != "practice", item[0][1])):
            rows.append({**base, "kind": kind, "evaluation_index": str(position), **entry,
                         "complete": finished, "incomplete_reason": reason})
        if our_columns and not answered:  # nothing to rate-check, but the participant must be reported
            rows.append({**base, "kind": "story", "evaluation_index": "", "blinded_id": "",
                         **{c: "" for c in CRITERION_NAMES}, "complete": False, "incomplete_reason": reason})
    result = finish(rows)
    result.attrs["skipped_metadata_rows"] = skipped
    return result


def write(survey: Survey, config: ExportConfig) -> dict[str, str]:
    return {f"{PARTICIPANT_DIR}/qualtrics.txt": qualtrics_survey(survey, config.title),
            f"{RESEARCHER_DIR}/qualtrics_setup.md": qualtrics_setup_notes(survey)}


FORMAT = SurveyFormat("qualtrics", "a Qualtrics wide export (one row per participant)", detect, read, write)
