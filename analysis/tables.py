"""Write a results table as CSV, LaTeX (booktabs) and Markdown, each file atomically."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.files import write_atomic


@dataclass(frozen=True)
class TableFiles:
    name: str
    caption: str
    csv: Path
    tex: Path
    md: Path


def _format_number(value: object, digits: int) -> object:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return value


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """GitHub Markdown; cell text is HTML-escaped and pipes escaped, since ids and labels may come from model output."""
    def cell(value: object) -> str:
        return html.escape(str(_format_number(value, digits))).replace("|", "\\|").replace("\n", " ")

    shown = table.map(cell)
    shown.columns = [cell(c) for c in table.columns]
    align = ["right" if pd.api.types.is_numeric_dtype(table[c]) else "left" for c in table.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


# Hand-written: pandas keeps its LaTeX escaper private, and captions need one too.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape_latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(character, character) for character in str(text))


def latex_table(table: pd.DataFrame, caption: str, label: str, digits: int = 3) -> str:
    """A booktabs table; every cell and header is escaped, numbers rounded to ``digits``."""
    shown = table.map(lambda value: escape_latex(_format_number(value, digits)) if not
                      (isinstance(value, float) and np.isnan(value)) else "--")
    shown.columns = [escape_latex(c) for c in table.columns]
    styler = shown.style.hide(axis="index")
    return styler.to_latex(caption=escape_latex(caption), label=f"tab:{escape_latex(label)}", hrules=True,
                           position="htbp", position_float="centering",
                           column_format="".join("r" if pd.api.types.is_numeric_dtype(table[c]) else "l"
                                                 for c in table.columns))


def write_table(table: pd.DataFrame, out_dir: str | Path, name: str, caption: str, digits: int = 3) -> TableFiles:
    """``<out_dir>/<name>.csv|.tex|.md``; CSV keeps full precision, the others round to ``digits``."""
    out_dir = Path(out_dir)
    files = TableFiles(name, caption, out_dir / f"{name}.csv", out_dir / f"{name}.tex", out_dir / f"{name}.md")
    write_atomic(files.csv, table.to_csv(index=False))
    write_atomic(files.tex, latex_table(table, caption, name, digits))
    write_atomic(files.md, f"{markdown_table(table, digits)}\n\n*{html.escape(caption, quote=False)}*\n")
    return files
