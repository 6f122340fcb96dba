"""Writing outputs so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Mapping

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


def write_all_atomic(files: Mapping[Path, str]) -> None:
    """Write several files; each appears whole or not at all.

    Every file is written to its temporary name first, and only when all of
    them are on disk are they renamed into place, so a failure while writing
    leaves the earlier versions untouched.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((temporary, path))
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
        for temporary, path in staged:
            os.replace(temporary, path)
    except BaseException:
        for temporary, _ in staged:
            Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_all_atomic({path: text})
