"""Every survey format in one table: how a file is recognised, read back and (optionally) written.

A format is one module of this package defining ``FORMAT``, a
:class:`~analysis.survey.formats.base.SurveyFormat` (name, ``detect`` on the
header, ``read`` to the raw long table, optional ``write`` for the export),
plus its line in ``FORMATS`` below. The import (``format=auto``) picks the one
format whose ``detect`` accepts a file's columns; the export writes the files
of every format that has a writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analysis.survey.config import SurveyError
from analysis.survey.formats import html, long, qualtrics, tidy
from analysis.survey.formats.base import ReadOptions, SurveyFormat

__all__ = ["FORMATS", "ReadOptions", "SurveyFormat", "by_name", "detect_format", "names"]

FORMATS: tuple[SurveyFormat, ...] = (
    html.FORMAT,
    long.FORMAT,
    qualtrics.FORMAT,
    tidy.FORMAT,
)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS)


def by_name(name: str) -> SurveyFormat:
    for item in FORMATS:
        if item.name == name:
            return item
    raise SurveyError(f"format={name!r} is not allowed: one of auto, {', '.join(names())}")


def detect_format(columns: Sequence[str], path: Path) -> SurveyFormat:
    """The one format whose ``detect`` accepts these columns; an error naming the file otherwise."""
    found = [item for item in FORMATS if item.detect(columns)]
    if len(found) == 1:
        return found[0]
    shown = ", ".join(list(columns)[:12]) + (" ..." if len(columns) > 12 else "")
    if not found:
        choices = "; ".join(f"format={f.name} ({f.description})" for f in FORMATS)
        raise SurveyError(f"{path}: cannot tell the format from its columns ({shown}); give one of {choices}")
    raise SurveyError(f"{path}: the columns ({shown}) fit several formats ({', '.join(f.name for f in found)}); "
                      f"give {' or '.join(f'format={f.name}' for f in found)}")
