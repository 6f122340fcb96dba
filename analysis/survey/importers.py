"""Readers that bring ratings back from every export format into one raw long table.

Each reader returns one row per (participant, story shown) with the columns
of ``RAW_COLUMNS``: the ratings still as text (validation parses and checks
them), where the row came from (``source``, ``source_row``: data rows counted
from 1 below the header, as a spreadsheet shows them minus one) and whether the
participant's response is complete.

Formats:

- ``html``: the CSVs the HTML survey downloads (one file per participant);
- ``long``: ``packets.csv`` with the rating columns filled in;
- ``qualtrics``: a Qualtrics wide export, one row per participant, in either
  layout: the paper's (``{k}_{Criterion}_1`` rated the story in ``story_id_{k-1}``)
  or this package's (``P03_2_<blinded id>_{Criterion}_1``). Up to two metadata
  rows below the header (question texts, ``{"ImportId": ...}``) are skipped;
  the spreadsheet guard apostrophe (``'-nc7``) is removed.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pandas as pd

from analysis.survey.config import InputFormat, SurveyError
from analysis.survey.files import unguard_cell
from analysis.survey.questions import CRITERIA, CRITERION_NAMES

RAW_COLUMNS = ("source", "source_row", "participant_id", "kind", "evaluation_index", "blinded_id",
               *CRITERION_NAMES, "complete", "incomplete_reason")
COVARIATES = ("genai_familiarity", "genai_comfort", "story_writing", "story_reviewing", "evaluation_approach")
# Normalised Qualtrics column -> covariate (the paper's names and this package's question ids).
QUALTRICS_COVARIATES = {
    "gen_ai_familiarity_1": "genai_familiarity", "genai_familiarity_1": "genai_familiarity",
    "gen_ai_comfort_1": "genai_comfort", "genai_comfort_1": "genai_comfort",
    "story_writing": "story_writing", "story_reviewing": "story_reviewing",
    "eval_approach": "evaluation_approach",
}
PARTICIPANT_COLUMNS = ("RandomID", "PROLIFIC_PID", "ResponseId")
_CRITERIA_PATTERN = "|".join(c.label for c in CRITERIA)


def input_files(spec: str, leave_out: tuple[Path, ...] = ()) -> list[Path]:
    """A file, every ``*.csv`` in a folder, or the files a glob pattern matches (sorted).

    ``leave_out`` (the import's own output files) is never read as input.
    """
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and ".csv" in p.name.lower())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
    skip = {p.resolve() for p in leave_out}
    files = [f for f in files if f.resolve() not in skip]
    if not files:
        raise SurveyError(f"input={spec}: no such file, no CSV files in that folder, or nothing matches the pattern")
    return files


def read_table(path: Path) -> pd.DataFrame:
    """Every cell as text ('' when empty), so ids like 007 or NA survive; compression from the name."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise SurveyError(f"{path}: cannot be read as CSV ({error})") from None
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    first = frame.columns[0] if len(frame.columns) else ""
    if first == "" or first.startswith("Unnamed: 0"):  # a saved pandas index
        frame = frame.drop(columns=first)
    return frame.map(lambda v: v.strip() if isinstance(v, str) else v)


def normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def detect_format(frame: pd.DataFrame, path: Path) -> InputFormat:
    columns = set(frame.columns)
    if {"survey_id", "packet", "blinded_id"} <= columns:
        return InputFormat.html
    if {"participant", "blinded_id"} <= columns:
        return InputFormat.long
    pattern = re.compile(rf"_({_CRITERIA_PATTERN})(_practice)?_1$", re.IGNORECASE)
    if "ResponseId" in columns or any(pattern.search(c) for c in columns):
        return InputFormat.qualtrics
    raise SurveyError(f"{path}: cannot tell the format from its columns ({', '.join(list(frame.columns)[:12])} ...); "
                      "give format=html, format=long or format=qualtrics")


def _require(frame: pd.DataFrame, columns, path: Path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SurveyError(f"{path}: missing column(s) {', '.join(missing)} needed in {what} "
                          f"(found: {', '.join(frame.columns)})")


def _finish(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in (*RAW_COLUMNS, *COVARIATES):
        if column not in frame:
            frame[column] = ""
    return frame


# ---------------------------------------------------------------------------
# HTML survey CSVs


def read_html(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(frame, ("survey_id", "participant_id", "packet", "packet_size", "kind", "position", "blinded_id",
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
    return _finish(rows)


# ---------------------------------------------------------------------------
# The long packets CSV, filled in


def read_long(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(frame, ("participant", "position", "blinded_id", *CRITERION_NAMES), path, "the long packets CSV")
    rows = []
    for index, row in frame.iterrows():
        rows.append({
            "source": str(path), "source_row": index + 1, "participant_id": row["participant"],
            "kind": row["kind"] if "kind" in frame else "story", "evaluation_index": row["position"],
            "blinded_id": row["blinded_id"], **{c: row[c] for c in CRITERION_NAMES},
            **{c: unguard_cell(row[c]) for c in COVARIATES if c in frame},
            "complete": True, "incomplete_reason": "",
        })
    return _finish(rows)


# ---------------------------------------------------------------------------
# Qualtrics wide export


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
        _require(frame, (wanted,), path, f"a Qualtrics export (participant_column={wanted})")
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


def read_qualtrics(frame: pd.DataFrame, path: Path, participant_column: str | None = None) -> pd.DataFrame:
    frame, skipped = _drop_metadata_rows(frame)
    participant = _participant_column(frame, path, participant_column)
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
    result = _finish(rows)
    result.attrs["skipped_metadata_rows"] = skipped
    return result


def read_ratings_input(spec: str, format: InputFormat = InputFormat.auto, participant_column: str | None = None,
                       leave_out: tuple[Path, ...] = ()) -> tuple[pd.DataFrame, InputFormat]:
    """Read every input file into one raw long table; all files must be of one format."""
    frames, formats = [], set()
    for path in input_files(spec, leave_out):
        table = read_table(path)
        found = detect_format(table, path) if format == InputFormat.auto else format
        formats.add(found)
        if found == InputFormat.html:
            frames.append(read_html(table, path))
        elif found == InputFormat.long:
            frames.append(read_long(table, path))
        else:
            frames.append(read_qualtrics(table, path, participant_column))
    if len(formats) > 1:
        raise SurveyError(f"input={spec}: files of different formats ({', '.join(sorted(f.value for f in formats))}); "
                          "import them separately")
    raw = pd.concat(frames, ignore_index=True)
    return raw, formats.pop()
