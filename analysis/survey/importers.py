"""Reading rating files of any registered format into one raw long table.

Which files (:func:`input_files`), how each is read as a table (compression,
byte-order mark, delimiter: :mod:`analysis.survey.formats.table`), which
format it is in (:func:`analysis.survey.formats.detect_format`, or
``format=``), the format's reader, then the decimal mark of its numbers. The
formats themselves (``html``, ``long``, ``qualtrics``, ``tidy``) are the
modules of :mod:`analysis.survey.formats`, listed in its ``FORMATS``.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from analysis.survey.config import SurveyError
from analysis.survey.formats import ReadOptions, SurveyFormat, by_name, detect_format
from analysis.survey.formats.base import COVARIATES, RAW_COLUMNS
from analysis.survey.formats.table import DELIMITERS, decimal_of, load_table, read_table, to_decimal_point

__all__ = ["COVARIATES", "RAW_COLUMNS", "input_files", "read_ratings_input", "read_table"]

DECIMAL_MARKS = {"point": ".", "comma": ","}


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


def _option(value, choices: dict[str, str]) -> str | None:
    """The character of a delimiter/decimal option (an enum member or its name); None for auto."""
    name = getattr(value, "value", value)
    return None if name in (None, "auto") else choices[name]


def read_ratings_input(spec: str, format: str = "auto", participant_column: str | None = None,
                       leave_out: tuple[Path, ...] = (), delimiter="auto",
                       decimal="auto") -> tuple[pd.DataFrame, SurveyFormat]:
    """Read every input file into one raw long table; all files must be of one format."""
    options = ReadOptions(participant_column=participant_column)
    wanted = None if format == "auto" else by_name(format)
    separator, mark = _option(delimiter, DELIMITERS), _option(decimal, DECIMAL_MARKS)
    frames, formats, skipped = [], {}, 0
    for path in input_files(spec, leave_out):
        table, used = load_table(path, separator)
        found = wanted or detect_format(list(table.columns), path)
        formats[found.name] = found
        raw = found.read(table, path, options)
        skipped += int(raw.attrs.get("skipped_metadata_rows", 0))
        frames.append(to_decimal_point(raw, path, mark or decimal_of(raw, used, path)))
    if len(formats) > 1:
        raise SurveyError(f"input={spec}: files of different formats ({', '.join(sorted(formats))}); "
                          "import them separately")
    raw = pd.concat(frames, ignore_index=True)
    raw.attrs["skipped_metadata_rows"] = skipped
    return raw, formats.popitem()[1]
