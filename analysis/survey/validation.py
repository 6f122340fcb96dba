"""Checks on imported ratings, and the exclusion rule when they fail.

Every problem names its file and row (data rows counted from 1 below the
header), the participant and the story. With ``on_invalid=error`` any problem
stops the import; with ``drop_rows`` the offending rows are left out (all
rows of a response that is itself at fault: incomplete, from another survey,
a participant question out of range), with ``drop_participants`` every row of
a participant with any problem is; either way the exclusions are returned, to
be written next to the output and logged.

Problems: a rating that is not a number or lies outside the scale; a missing
rating or an incomplete response (fewer packet stories than the packet holds,
Qualtrics ``Finished=False``, no packet answered); a blinded id the key does
not know, or a file from another survey; the same (participant, story) twice;
a participant question answered outside 1..5; a missing participant id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.survey.config import OnInvalid, SurveyError
from analysis.survey.formats.table import DECIMAL_COMMA_NUMBER
from analysis.survey.questions import CRITERION_NAMES, SCALE

SHOWN = 8  # problems listed in an error message
SCALE_COVARIATES = ("genai_familiarity", "genai_comfort")


@dataclass(frozen=True)
class Problem:
    row: int  # index in the raw table
    source: str
    source_row: int
    participant_id: str
    blinded_id: str
    problem: str
    whole_participant: bool = False  # the problem is with the response, not one row


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def find_problems(raw: pd.DataFrame, scale: tuple[float, float], known_ids: set[str] | None,
                  survey_id: str | None) -> list[Problem]:
    low, high = scale
    problems: list[Problem] = []

    def add(index, row, message, whole=False):
        problems.append(Problem(int(index), str(row["source"]), int(row["source_row"]), str(row["participant_id"]),
                                str(row["blinded_id"]), message, whole))

    for index, row in raw.iterrows():
        if row["participant_id"] == "":
            add(index, row, "no participant id")
        if not row["complete"]:
            add(index, row, f"incomplete response: {row['incomplete_reason']}", whole=True)
        if row["blinded_id"] == "":
            if row["complete"]:
                add(index, row, "no story id")
            continue
        for criterion in CRITERION_NAMES:
            text = row[criterion]
            if text == "":
                add(index, row, f"{criterion} is missing (incomplete rating)")
            elif (value := _number(text)) is None:
                hint = " (a decimal comma? give decimal=comma)" if DECIMAL_COMMA_NUMBER.fullmatch(text) else ""
                add(index, row, f"{criterion}={text!r} is not a number; allowed: numbers in [{low:g}, {high:g}]{hint}")
            elif not low <= value <= high:
                add(index, row, f"{criterion}={text} is outside the scale [{low:g}, {high:g}]")
        if known_ids is not None and row["blinded_id"] not in known_ids:
            add(index, row, f"story id {row['blinded_id']!r} is not in the unblinding key")
        if survey_id is not None and row.get("survey_id", "") not in ("", survey_id):
            add(index, row, f"survey_id={row['survey_id']!r} is not this key's survey ({survey_id!r})", whole=True)
        for covariate in SCALE_COVARIATES:
            text = row.get(covariate, "")
            value = _number(text)
            if text != "" and (value is None or value != int(value) or not SCALE[0] <= value <= SCALE[1]):
                add(index, row, f"{covariate}={text!r} is not an integer in [{SCALE[0]}, {SCALE[1]}]", whole=True)

    rated = raw.loc[raw["blinded_id"] != ""]
    first_seen: dict[tuple, int] = {}
    for index, row in rated.iterrows():
        pair = (row["participant_id"], row["kind"], row["blinded_id"])
        if pair in first_seen:
            earlier = raw.loc[first_seen[pair]]
            add(index, row, f"participant rated this story twice (also {earlier['source']} row "
                           f"{earlier['source_row']}; a file downloaded twice? keep one)")
        else:
            first_seen[pair] = index
    return problems


def describe(problem: Problem) -> str:
    return (f"{problem.source} row {problem.source_row} (participant {problem.participant_id!r}, "
            f"story {problem.blinded_id!r}): {problem.problem}")


def apply_rule(raw: pd.DataFrame, problems: list[Problem], rule: OnInvalid) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raise, or return (kept rows, exclusions report) under the exclusion rule."""
    if problems and rule == OnInvalid.error:
        listing = "\n  ".join(describe(p) for p in problems[:SHOWN])
        more = f"\n  ... {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise SurveyError(f"{len(problems)} problem(s) in the ratings (rows counted from 1 below the header); "
                          f"nothing was written. Fix them, or set on_invalid=drop_rows or "
                          f"on_invalid=drop_participants to exclude them (reported):\n  {listing}{more}")
    drop_rows = {p.row for p in problems if not p.whole_participant}
    bad_participants = {p.participant_id for p in problems if p.whole_participant}
    if rule == OnInvalid.drop_participants:
        bad_participants |= {p.participant_id for p in problems}
    dropped = raw.index.isin(list(drop_rows)) | raw["participant_id"].isin(bad_participants)
    reasons: dict[int, list[str]] = {}
    for p in problems:
        reasons.setdefault(p.row, []).append(p.problem)
    report = raw.loc[dropped, ["source", "source_row", "participant_id", "blinded_id"]].copy()
    report["reason"] = [
        "; ".join(reasons.get(i, [])) or "another row of this participant has a problem" for i in report.index]
    report["rule"] = rule.value
    return raw.loc[~dropped], report.reset_index(drop=True)
