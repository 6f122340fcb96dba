"""What a survey format is, and the raw long table every reader returns.

A format is a :class:`SurveyFormat`: a name (the ``format=`` value of the
import), a test on a file's header that says whether the file is in it, a
reader from the table to the raw long table, and optionally a writer that the
export calls to produce the format's survey files.

The raw long table has one row per (participant, story shown) with the
columns of ``RAW_COLUMNS``: the ratings still as text (validation parses and
checks them), where the row came from (``source``, ``source_row``: data rows
counted from 1 below the header, as a spreadsheet shows them minus one) and
whether the participant's response is complete. Readers may add the
covariates (``COVARIATES``), ``survey_id``, ``packet``, ``seconds_on_page``,
``story_id`` (when the file names the true story, not only the id shown) and
further columns passed through to the output as they are (``temperature`` of
a tidy table, for example).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import pandas as pd

from analysis.survey.config import SurveyError
from analysis.survey.questions import CRITERION_NAMES

if TYPE_CHECKING:
    from analysis.survey.blinding import Survey
    from analysis.survey.config import ExportConfig

PARTICIPANT_DIR = "participant"  # what a participant may see
RESEARCHER_DIR = "researcher"  # what unblinds, or is only for the researcher

RAW_COLUMNS = ("source", "source_row", "participant_id", "kind", "evaluation_index", "blinded_id",
               *CRITERION_NAMES, "complete", "incomplete_reason")
COVARIATES = ("genai_familiarity", "genai_comfort", "story_writing", "story_reviewing", "evaluation_approach")
# Columns a reader may add that are not passed through as extra columns.
KNOWN_COLUMNS = (*RAW_COLUMNS, *COVARIATES, "survey_id", "packet", "seconds_on_page", "story_id")
# Columns of the raw table read as numbers (the decimal mark applies to them).
NUMERIC_COLUMNS = (*CRITERION_NAMES, "genai_familiarity", "genai_comfort", "evaluation_index", "seconds_on_page")


@dataclass(frozen=True)
class ReadOptions:
    """What the import's config passes to every reader (a reader uses what concerns it)."""

    participant_column: Optional[str] = None  # Qualtrics: the participant id column


@dataclass(frozen=True)
class SurveyFormat:
    name: str  # the format= value of the import
    description: str  # one line: what the files are
    # Does a file with these (stripped) column names belong to this format? Formats must not overlap.
    detect: Callable[[Sequence[str]], bool]
    # The file's table (every cell as stripped text) -> the raw long table.
    read: Callable[[pd.DataFrame, Path, ReadOptions], pd.DataFrame]
    # The survey -> {"participant/NAME" or "researcher/NAME": text}; None: import only.
    write: Optional[Callable[["Survey", "ExportConfig"], Mapping[str, str]]] = None


def normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def require(frame: pd.DataFrame, columns, path: Path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SurveyError(f"{path}: missing column(s) {', '.join(missing)} needed in {what} "
                          f"(found: {', '.join(frame.columns)})")


def finish(rows: list[dict]) -> pd.DataFrame:
    """The raw long table of ``rows``; every raw column present (empty when a format has none)."""
    frame = pd.DataFrame(rows)
    for column in (*RAW_COLUMNS, *COVARIATES):
        if column not in frame:
            frame[column] = ""
    return frame
