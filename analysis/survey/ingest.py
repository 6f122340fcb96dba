"""``python -m analysis.survey import``: survey responses in, the long ratings table out.

Output columns: ``story_id, participant_id, evaluation_index, novelty,
typicality, cohesion, coherence``, the participant covariates
(``genai_familiarity, genai_comfort, story_writing, story_reviewing,
evaluation_approach``), then ``blinded_id`` and, with ``key=``, the story's
setting and its parameters (``setting_id, temperature, ...``). Without a key
``story_id`` is the id the participant saw (or, for a ``tidy`` input, its own
``story_id``). Extra columns of a tidy input (the paper's ``temperature``)
follow; a key's column of the same name replaces them. The analysis stage
reads this file directly (``ratings=FILE``).

Nothing is written until every check has passed (or the exclusion rule has
been applied); the table and its exclusion report are written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.survey.config import ImportConfig, OnInvalid, SurveyError
from analysis.survey.files import csv_text
from analysis.survey.formats import SurveyFormat
from analysis.survey.formats.base import KNOWN_COLUMNS
from analysis.survey.importers import COVARIATES, read_ratings_input, read_table
from analysis.survey.questions import CRITERION_NAMES
from analysis.survey.validation import SCALE_COVARIATES, apply_rule, find_problems
from experiments.files import write_all_atomic

log = logging.getLogger(__name__)

LEADING_COLUMNS = ("story_id", "participant_id", "evaluation_index", *CRITERION_NAMES, *COVARIATES)
KINDS = ("practice", "story")
FREE_TEXT = ("story_writing", "story_reviewing", "evaluation_approach")


@dataclass
class ImportResult:
    ratings: pd.DataFrame
    exclusions: pd.DataFrame
    format: SurveyFormat
    out: Path


def read_key(path: str) -> pd.DataFrame:
    file = Path(path)
    if not file.is_file():
        raise SurveyError(f"key={path}: no such file (the export writes researcher/unblinding_key.csv)")
    key = read_table(file)
    missing = [c for c in ("blinded_id", "story_id") if c not in key.columns]
    if missing:
        raise SurveyError(f"key={path}: missing column(s) {', '.join(missing)}; is this the unblinding key?")
    duplicated = key.loc[key["blinded_id"].duplicated(), "blinded_id"]
    if len(duplicated):
        raise SurveyError(f"key={path}: blinded id(s) {', '.join(duplicated[:5])} appear more than once")
    return key


def _key_survey_id(key: pd.DataFrame | None) -> str | None:
    if key is None or "survey_id" not in key.columns:
        return None
    ids = set(key["survey_id"]) - {""}
    return ids.pop() if len(ids) == 1 else None


def _typed(kept: pd.DataFrame) -> pd.DataFrame:
    """Ratings as floats, indices and 1-5 covariates as integers (empty stays missing), ids as text."""
    table = kept.copy()
    for criterion in CRITERION_NAMES:
        table[criterion] = table[criterion].astype(float)
    table["evaluation_index"] = pd.to_numeric(table["evaluation_index"], errors="coerce").astype("Int64")
    for covariate in SCALE_COVARIATES:
        table[covariate] = pd.to_numeric(table[covariate].replace("", None), errors="coerce").astype("Int64")
    return table


def build_table(kept: pd.DataFrame, key: pd.DataFrame | None, keep_practice: bool) -> pd.DataFrame:
    table = _typed(kept)
    given = table["story_id"].fillna("") if "story_id" in table else pd.Series("", index=table.index)
    table["story_id"] = given.where(given != "", table["blinded_id"])
    extras = [c for c in ("packet", "seconds_on_page") if c in table and (table[c].fillna("") != "").any()]
    passed = [c for c in table.columns if c not in KNOWN_COLUMNS and c != "practice"]
    if key is not None:
        replaced = [c for c in passed if c in key.columns]
        if replaced:
            log.info("the key's %s replace the input's columns of the same name", ", ".join(replaced))
        passed = [c for c in passed if c not in replaced]
    columns = [*LEADING_COLUMNS, "blinded_id", *extras, *passed]
    if keep_practice:
        table["practice"] = table["kind"] == "practice"
        columns.append("practice")
    table = table[columns]
    if key is not None:
        joined = [c for c in key.columns if c not in ("survey_id", "blinded_id", "story_id")]
        key_part = key[["blinded_id", "story_id", *joined]].rename(columns={"story_id": "_true_story_id"})
        table = table.merge(key_part, on="blinded_id", how="left", validate="many_to_one")
        table["story_id"] = table.pop("_true_story_id")
    return table.reset_index(drop=True)


def import_ratings(config: ImportConfig) -> ImportResult:
    key = read_key(config.key) if config.key is not None else None
    out = Path(config.out)
    report_path = out.with_name(out.name + ".exclusions.csv")
    raw, found_format = read_ratings_input(config.input, config.format, config.participant_column,
                                           leave_out=(out, report_path), delimiter=config.delimiter,
                                           decimal=config.decimal)
    skipped = int(raw.attrs.get("skipped_metadata_rows", 0))
    if skipped:
        log.info("skipped %d Qualtrics metadata row(s) below the header", skipped)

    unknown_kind = raw.loc[~raw["kind"].isin(KINDS)]
    if len(unknown_kind):
        row = unknown_kind.iloc[0]
        raise SurveyError(f"{row['source']} row {row['source_row']}: kind={row['kind']!r}; allowed: "
                          f"{', '.join(KINDS)}")
    if not config.keep_practice:
        raw = raw.loc[raw["kind"] == "story"]
    known_ids = set(key["blinded_id"]) if key is not None else None
    problems = find_problems(raw, (config.scale_min, config.scale_max), known_ids, _key_survey_id(key))
    kept, exclusions = apply_rule(raw, problems, config.on_invalid)
    kept = kept.loc[kept["blinded_id"] != ""]
    if kept.empty:
        raise SurveyError(f"input={config.input}: no ratings left to write"
                          + (f" after excluding {len(exclusions)} row(s)" if len(exclusions) else ""))
    table = build_table(kept, key, config.keep_practice)

    # Free-text answers are untrusted: guarded against spreadsheet formulas.
    files = {out: csv_text(table, guard_columns=FREE_TEXT)}
    if config.on_invalid != OnInvalid.error:
        files[report_path] = csv_text(exclusions)
        if len(exclusions):
            log.warning("excluded %d row(s) of %d participant(s) under on_invalid=%s; see %s",
                        len(exclusions), exclusions["participant_id"].nunique(), config.on_invalid.value,
                        report_path.name)
    write_all_atomic(files)
    return ImportResult(table, exclusions, found_format, out)
