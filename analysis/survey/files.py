"""The survey's CSV text, with the spreadsheet formula guard.

Files are written with ``experiments.files.write_all_atomic``: each appears
whole or not at all.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

# A cell starting with one of these is run as a formula by spreadsheet programs
# (OWASP "CSV injection"); a leading apostrophe makes it text. Qualtrics does
# the same (the paper's story id '-nc7), and every importer here strips it.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def guard_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def unguard_cell(value):
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_TRIGGERS):
        return value[1:]
    return value


def csv_text(frame: pd.DataFrame, guard_columns: tuple[str, ...] = ()) -> str:
    """The frame as CSV text (every field that needs it quoted); ``guard_columns`` get the formula guard."""
    frame = frame.copy()
    for column in guard_columns:
        frame[column] = frame[column].map(guard_cell)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    return buffer.getvalue()
