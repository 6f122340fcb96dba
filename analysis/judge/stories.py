"""The stories a judge rates and the exemplar it compares them with.

``stories=`` is a story store (``stories.jsonl``), a run directory holding
one, or the paper's ``survey_stories`` folder (or the paper folder holding
it): ``<story_id>.txt`` files and a ``metadata.csv`` with ids and
temperatures; its practice stories are left out, as in the analysis.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.judge.config import JudgeInputError
from experiments.store import STORIES_FILE, StoreError, story_table


def load_stories(source: str | Path) -> pd.DataFrame:
    """story_id, text, temperature (NaN where unknown), in the source's order; errors name the path."""
    path = Path(source).expanduser()
    survey_folder = path if path.name == "survey_stories" else path / "survey_stories"
    if path.is_dir() and (survey_folder / "metadata.csv").exists() and not (path / STORIES_FILE).exists():
        from analysis.reproduce_paper import survey_stories

        frame = survey_stories(survey_folder.parent)
    else:
        store = path / STORIES_FILE if path.is_dir() else path
        if not store.exists():
            raise JudgeInputError(f"stories={source}: no such file or folder; allowed: a stories.jsonl, a run "
                                  f"directory holding one, or the paper's survey_stories folder")
        try:
            frame = story_table(store, fields=["text", "temperature"]).frame
        except StoreError as error:
            raise JudgeInputError(f"stories={source}: {error}") from None
    if frame.empty:
        raise JudgeInputError(f"stories={source}: holds no story")
    if "text" not in frame.columns:
        raise JudgeInputError(f"stories={source}: the stories have no 'text' field")
    empty = frame.index[frame["text"].isna() | (frame["text"].astype(str).str.strip() == "")]
    if len(empty):
        raise JudgeInputError(f"stories={source}: story {frame.loc[empty[0], 'story_id']!r} has an empty text "
                              f"({len(empty)} empty in all)")
    if "temperature" not in frame.columns:
        frame["temperature"] = float("nan")
    frame = frame[["story_id", "text", "temperature"]].copy()
    frame["story_id"] = frame["story_id"].astype(str)
    frame["temperature"] = pd.to_numeric(frame["temperature"], errors="coerce")
    return frame.reset_index(drop=True)


def load_exemplar(source: str | Path) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        raise JudgeInputError(f"exemplar={source}: no such file (expected the exemplar story as a text file)")
    text = path.read_text(encoding="utf-8").replace("<br>", "\n").strip()
    if not text:
        raise JudgeInputError(f"exemplar={source}: the file is empty")
    return text
