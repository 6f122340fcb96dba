"""Reading a survey CSV file: compression, byte-order mark, delimiter, decimal mark.

What a spreadsheet saves varies: UTF-8 with or without a byte-order mark;
commas between fields and decimal points (English locales), or semicolons and
decimal commas (many European locales); tabs. Every file is read so that a
value is never misread: a ``1,5`` is read as 1.5 or refused, never as 15 and
never as two fields.

- Delimiter (``delimiter=auto|comma|semicolon|tab``): the one of ``, ; tab``
  that splits the header into several columns. If several do, the one that
  gives every row as many fields as the header; if that is still more than
  one, the import stops and asks for ``delimiter=``. A row with more fields
  than the header (an unquoted ``1,5`` in a comma-separated file) is an error.
- Decimal mark (``decimal=auto|point|comma``), decided from the cells that are
  read as numbers (ratings, 1-5 answers, positions, and the extra columns of
  a tidy table that hold only numbers): in a comma-separated file a decimal
  point (a quoted ``"1,5"`` may be a thousands separator there, so it needs
  ``decimal=comma``); in a semicolon- or tab-separated file a decimal comma
  if such numbers occur, and an error if both ``1,5``-style and
  ``1.5``-style numbers occur. With decimal commas, ``1,5`` becomes ``1.5``
  before validation, and a ``1.5`` is refused (its point could be a
  thousands separator).

Every cell is kept as text, so ids such as ``007`` or ``NA`` survive.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

from analysis.survey.config import SurveyError
from analysis.survey.formats.base import KNOWN_COLUMNS, NUMERIC_COLUMNS

DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t"}
DELIMITER_NAMES = {char: name for name, char in DELIMITERS.items()}
DECIMAL_COMMA_NUMBER = re.compile(r"[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?")
DECIMAL_POINT_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?")
INTEGER = re.compile(r"[+-]?\d+")


def file_text(path: Path) -> str:
    """The file's text: unpacked by its name (.gz, .bz2, .xz, .zip, .tar[.gz|.bz2|.xz]), UTF-8, BOM removed."""
    name = path.name.lower()
    try:
        data = path.read_bytes()
        if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
                if len(members) != 1:
                    raise SurveyError(f"{path}: the archive holds {len(members)} files; give one CSV file")
                data = archive.extractfile(members[0]).read()
        elif name.endswith(".gz"):
            data = gzip.decompress(data)
        elif name.endswith(".bz2"):
            data = bz2.decompress(data)
        elif name.endswith(".xz"):
            data = lzma.decompress(data)
        elif name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise SurveyError(f"{path}: the archive holds {len(members)} files; give one CSV file")
                data = archive.read(members[0])
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError) as error:
        raise SurveyError(f"{path}: cannot be read ({error})") from None
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as error:
        raise SurveyError(f"{path}: is not UTF-8 text (byte {error.start}); save it as CSV in UTF-8 "
                          "(a spreadsheet's 'CSV UTF-8' option)") from None


def _rows(text: str, delimiter: str, path: Path) -> list[list[str]]:
    """The records (blank lines skipped, as a spreadsheet does)."""
    try:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [row for row in rows if row and not (len(row) == 1 and not row[0].strip())]
    except csv.Error as error:
        raise SurveyError(f"{path}: cannot be read as CSV ({error})") from None


def _fits(rows: list[list[str]]) -> bool:
    """No row has more (non-empty) fields than the header."""
    width = len(rows[0])
    return all(len(row) <= width or not any(cell.strip() for cell in row[width:]) for row in rows[1:])


def _header(text: str, delimiter: str) -> list[str]:
    try:
        return next((row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if row), [])
    except csv.Error:
        return []


def delimiter_of(text: str, path: Path) -> str:
    """The delimiter of a file (see the module's notes), or an error asking for ``delimiter=``."""
    splitting = [char for char in DELIMITERS.values() if len(_header(text, char)) > 1]
    if len(splitting) == 1:
        return splitting[0]
    if not splitting:
        return ","  # one column (or an empty file): nothing to choose
    fitting = [char for char in splitting if _fits(_rows(text, char, path))]
    if len(fitting) == 1:
        return fitting[0]
    names = " or ".join(f"delimiter={DELIMITER_NAMES[char]}" for char in (fitting or splitting))
    raise SurveyError(f"{path}: cannot tell the delimiter: the header splits into columns on "
                      f"{' and on '.join(repr(c) for c in splitting)}; give {names}")


def _column_names(header: list[str]) -> list[str]:
    """Stripped names; an empty name becomes 'Unnamed: i' and a repeated one 'name.1' (as pandas names them)."""
    names: list[str] = []
    for index, name in enumerate(header):
        name = name.strip() or f"Unnamed: {index}"
        candidate, count = name, 0
        while candidate in names:
            count += 1
            candidate = f"{name}.{count}"
        names.append(candidate)
    return names


def load_table(path: Path, delimiter: str | None = None) -> tuple[pd.DataFrame, str]:
    """(every cell as stripped text, '' when empty; the delimiter used). A saved pandas index column is dropped."""
    text = file_text(path)
    char = delimiter if delimiter is not None else delimiter_of(text, path)
    rows = _rows(text, char, path)
    if not rows:
        raise SurveyError(f"{path}: the file is empty (no header row)")
    names = _column_names(rows[0])
    width = len(names)
    for number, row in enumerate(rows[1:], start=1):
        if len(row) > width and any(cell.strip() for cell in row[width:]):
            hint = ""
            if char == ",":
                hint = ("; a decimal comma (1,5) in a comma-separated file splits the number in two: "
                        "quote such values or save the file with semicolons")
            raise SurveyError(f"{path}: data row {number} has {len(row)} fields but the header has {width} "
                              f"(read with delimiter={DELIMITER_NAMES[char]}){hint}")
    cells = [[cell.strip() for cell in row[:width]] + [""] * (width - len(row)) for row in rows[1:]]
    frame = pd.DataFrame(cells, columns=names, dtype=str)
    first = names[0] if names else ""
    if first.startswith("Unnamed: 0"):  # a saved pandas index
        frame = frame.drop(columns=first)
    return frame, char


def read_table(path: Path, delimiter: str | None = None) -> pd.DataFrame:
    return load_table(path, delimiter)[0]


# ---------------------------------------------------------------------------
# The decimal mark, applied to the raw long table a reader returned


def numeric_columns(raw: pd.DataFrame) -> list[str]:
    """The raw columns read as numbers: the known ones, and extra columns holding only numbers."""
    columns = [c for c in NUMERIC_COLUMNS if c in raw.columns]
    for column in raw.columns:
        if column in KNOWN_COLUMNS:
            continue
        values = [v for v in raw[column].astype(str) if v != ""]
        if values and all(INTEGER.fullmatch(v) or DECIMAL_COMMA_NUMBER.fullmatch(v)
                          or DECIMAL_POINT_NUMBER.fullmatch(v) for v in values):
            columns.append(column)
    return columns


def _first(raw: pd.DataFrame, columns: list[str], pattern: re.Pattern) -> tuple[int, str, str] | None:
    """(source row, column, value) of the first cell matching ``pattern``."""
    for column in columns:
        matches = raw[column].astype(str).map(lambda v: bool(pattern.fullmatch(v)))
        if matches.any():
            index = matches.idxmax()
            return raw.loc[index, "source_row"], column, raw.loc[index, column]
    return None


def decimal_of(raw: pd.DataFrame, delimiter: str, path: Path) -> str:
    """'.' or ',' for the numbers of one file (see the module's notes); an error when it cannot tell."""
    if delimiter == ",":
        return "."
    columns = numeric_columns(raw)
    comma = _first(raw, columns, DECIMAL_COMMA_NUMBER)
    point = _first(raw, columns, DECIMAL_POINT_NUMBER)
    if comma and point:
        raise SurveyError(f"{path}: numbers with a decimal comma ({comma[1]}={comma[2]!r} in row {comma[0]}) and "
                          f"with a decimal point ({point[1]}={point[2]!r} in row {point[0]}); cannot tell which "
                          "is the decimal mark: give decimal=comma or decimal=point")
    return "," if comma else "."


def to_decimal_point(raw: pd.DataFrame, path: Path, decimal: str) -> pd.DataFrame:
    """With decimal commas: '1,5' -> '1.5' in the numeric columns; a '1.5' there is an error."""
    if decimal != ",":
        return raw
    raw = raw.copy()
    columns = numeric_columns(raw)
    point = _first(raw, columns, DECIMAL_POINT_NUMBER)
    if point:
        raise SurveyError(f"{path} row {point[0]}: {point[1]}={point[2]!r} has a decimal point but the file is read "
                          "with decimal commas (its point could be a thousands separator); "
                          "fix the value or give decimal=point")
    for column in columns:
        raw[column] = raw[column].map(
            lambda v: v.replace(",", ".") if isinstance(v, str) and DECIMAL_COMMA_NUMBER.fullmatch(v) else v)
    return raw
