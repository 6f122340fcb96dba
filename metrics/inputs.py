"""Reading stories and exemplars from the harness or from anywhere else.

Stories come from:
- a run's ``stories.jsonl`` (or the run folder holding it), as
  ``experiments.store.story_table`` reads it: every field (``seed`` the
  story's own), each sampling parameter of ``setting`` as its own column
  (the setting's seed as ``base_seed``);
- any JSONL or CSV with at least ``story_id`` and ``text``;
- a folder of ``.txt`` files (story_id = file stem), optionally with a
  ``metadata.csv`` (an ``id`` or ``story_id`` column; ``t`` is read as
  temperature), as the paper's survey_stories folder has. A file named
  ``<id>_practice.txt`` is story ``<id>``, marked practice.

Bad input raises ``InputError`` naming the file, field or value and what is
allowed, before anything expensive runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from experiments.config import SamplingConfig
from experiments.store import STORIES_FILE, StoreError, story_table
from metrics.config import MetricsInputError
from metrics.text import LONE_SURROGATE, replace_lone_surrogates

log = logging.getLogger(__name__)

PRACTICE_SUFFIX = "_practice"
METADATA_FILE = "metadata.csv"
# Sampling parameters a CSV or metadata.csv may carry as columns.
SAMPLING_PARAMETERS = [f.name for f in dataclasses.fields(SamplingConfig) if f.name != "n"]
# A leading apostrophe that spreadsheets put before -, +, = or @ (the paper's "'-nc7").
SPREADSHEET_GUARD = "'"


class InputError(MetricsInputError):
    """Input that the metrics stage cannot read as documented."""


@dataclass
class LoadedStories:
    frame: pd.DataFrame  # story_id, text, setting_id and whatever else the input has
    setting_columns: list[str]  # the sampling parameters, one column each
    source: dict[str, Any] = field(default_factory=dict)


def _unguard(story_id: str) -> str:
    if story_id.startswith(SPREADSHEET_GUARD) and len(story_id) > 1 and story_id[1] in "-+=@":
        return story_id[1:]
    return story_id


def _numeric_where_possible(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for column in columns:
        present = frame[column].notna() & (frame[column].astype(str) != "")
        converted = pd.to_numeric(frame[column].where(present), errors="coerce")
        if converted.notna().sum() == present.sum():  # every value given is a number
            frame[column] = converted
    return frame


def _check_ids(frame: pd.DataFrame, where: str) -> None:
    ids = frame["story_id"].astype(str)
    if (ids.str.strip() == "").any():
        raise InputError(f"{where}: {(ids.str.strip() == '').sum()} stories have an empty story_id")
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise InputError(f"{where}: story_id values must be unique; repeated: {duplicated[:10]}")


def _clean_string(value: Any, path: Path, story_id: Any, key: str) -> Any:
    """JSON can carry unpaired surrogates ("\\ud800") that no table or tokenizer accepts."""
    if isinstance(value, str) and LONE_SURROGATE.search(value):
        log.warning("%s: story %r: unpaired surrogates in %s replaced by U+FFFD", path, story_id, key)
        return replace_lone_surrogates(value)
    return value


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[str]]:
    def checked(record: int, story: dict) -> dict:
        if "text" not in story:
            raise InputError(f"{path}: story {story['story_id']!r} (record {record}) has no 'text' field")
        if story["text"] is not None and not isinstance(story["text"], str):
            raise InputError(f"{path}: story {story['story_id']!r} has a 'text' that is a "
                             f"{type(story['text']).__name__}, not a string")
        return {key: value if key == "setting" else _clean_string(value, path, story["story_id"], key)
                for key, value in story.items()}

    try:
        # The store's one table: streamed, log-probs and sampler diagnostics as float arrays, each
        # setting parameter a column.
        table = story_table(path, with_logprobs=True, with_diagnostics=True, prepare=checked)
    except StoreError as error:
        raise InputError(str(error)) from None
    frame = table.frame
    if frame.empty:
        raise InputError(f"{path}: no stories")
    setting_columns = list(table.setting_columns) or [c for c in SAMPLING_PARAMETERS if c in frame]
    return frame, setting_columns


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:")])
    missing = [c for c in ("story_id", "text") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; a stories CSV needs story_id and text "
                         f"(found {list(frame.columns)})")
    if frame.empty:
        raise InputError(f"{path}: no stories")
    frame["story_id"] = frame["story_id"].map(_unguard)
    if "token_logprobs" in frame:
        frame["token_logprobs"] = [json.loads(v) if v else None for v in frame["token_logprobs"]]
    setting_columns = [c for c in SAMPLING_PARAMETERS if c in frame.columns]
    numeric = setting_columns + [c for c in ("sample_index", "n_tokens") if c in frame.columns]
    return _numeric_where_possible(frame, numeric), setting_columns


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not valid UTF-8; undecodable bytes are replaced by U+FFFD", path)
        return raw.decode("utf-8", errors="replace")


def _read_metadata(path: Path) -> pd.DataFrame:
    metadata = pd.read_csv(path, dtype=str, keep_default_na=False)
    metadata = metadata.drop(columns=[c for c in metadata.columns if c.startswith("Unnamed:") or c == ""])
    id_column = "story_id" if "story_id" in metadata else "id" if "id" in metadata else None
    if id_column is None:
        raise InputError(f"{path}: needs an 'id' or 'story_id' column (found {list(metadata.columns)})")
    metadata = metadata.rename(columns={id_column: "story_id"})
    if "t" in metadata and "temperature" not in metadata:  # the paper's survey metadata
        metadata = metadata.rename(columns={"t": "temperature"})
    if "type" in metadata and "story_type" not in metadata:
        metadata = metadata.rename(columns={"type": "story_type"})
    metadata["story_id"] = metadata["story_id"].map(_unguard)
    _check_ids(metadata, str(path))
    return metadata


def _read_text_folder(folder: Path) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise InputError(f"{folder}: no .txt files (a story folder holds one <story_id>.txt per story)")
    rows = []
    for path in files:
        practice = path.stem.endswith(PRACTICE_SUFFIX)
        story_id = path.stem[: -len(PRACTICE_SUFFIX)] if practice else path.stem
        rows.append({"story_id": story_id, "text": _read_text_file(path), "file": path.name,
                     "practice": practice})
    frame = pd.DataFrame(rows)
    _check_ids(frame, str(folder))
    source: dict[str, Any] = {"metadata": None}
    metadata_path = folder / METADATA_FILE
    if metadata_path.exists():
        metadata = _read_metadata(metadata_path)
        unmatched_files = sorted(set(frame["story_id"]) - set(metadata["story_id"]))
        unmatched_rows = sorted(set(metadata["story_id"]) - set(frame["story_id"]))
        if unmatched_files:
            log.warning("%s: no metadata for stories %s", metadata_path, unmatched_files)
        if unmatched_rows:
            log.warning("%s: metadata for stories without a .txt file: %s", metadata_path, unmatched_rows)
        frame = frame.merge(metadata, on="story_id", how="left")
        if "story_type" in frame:
            frame["practice"] = frame["practice"] | (frame["story_type"] == "practice")
        source["metadata"] = str(metadata_path)
        source["metadata_unmatched"] = {"files": unmatched_files, "rows": unmatched_rows}
    setting_columns = [c for c in SAMPLING_PARAMETERS if c in frame.columns]
    return _numeric_where_possible(frame, setting_columns), setting_columns, source


def _with_setting_ids(frame: pd.DataFrame, setting_columns: list[str]) -> pd.DataFrame:
    """Keep the input's setting_id; else one setting per combination of parameters; else one for all."""
    if "setting_id" in frame and frame["setting_id"].notna().all() and (frame["setting_id"] != "").all():
        frame["setting_id"] = frame["setting_id"].astype(str)
        return frame
    if setting_columns:
        frame["setting_id"] = [",".join(f"{c}={row[c]}" for c in setting_columns)
                               for _, row in frame[setting_columns].iterrows()]
    else:
        frame["setting_id"] = "all"
    return frame


def load_stories(path: str | Path, include_practice: bool = True) -> LoadedStories:
    """Stories from a run's stories.jsonl (or its folder), a JSONL or CSV, a .txt folder or one .txt file."""
    path = Path(path).expanduser()
    source: dict[str, Any] = {"path": str(path)}
    if path.is_dir() and (path / STORIES_FILE).is_file():
        path = path / STORIES_FILE
        source["path"] = str(path)
    if path.is_dir():
        frame, setting_columns, extra = _read_text_folder(path)
        source.update(format="txt folder", **extra)
    elif path.is_file() and path.suffix in (".jsonl", ".json"):
        frame, setting_columns = _read_jsonl(path)
        source["format"] = "jsonl"
    elif path.is_file() and path.suffix == ".csv":
        frame, setting_columns = _read_csv(path)
        source["format"] = "csv"
    elif path.is_file() and path.suffix == ".txt":
        frame, setting_columns = pd.DataFrame([{"story_id": path.stem, "text": _read_text_file(path)}]), []
        source["format"] = "txt file"
    elif not path.exists():
        raise InputError(f"stories={str(path)!r}: no such file or folder")
    else:
        raise InputError(f"stories={str(path)!r}: expected a .jsonl, .csv or .txt file, or a folder of .txt files")
    _check_ids(frame, str(path))
    if "practice" in frame:
        practice_ids = frame.loc[frame["practice"], "story_id"].tolist()
        source["practice_story_ids"] = practice_ids
        if not include_practice and practice_ids:
            frame = frame[~frame["practice"]].reset_index(drop=True)
            source["practice_stories"] = "left out (include_practice=false)"
        else:
            source["practice_stories"] = "included"
    source["n_stories"] = len(frame)
    return LoadedStories(frame=_with_setting_ids(frame, setting_columns), setting_columns=setting_columns,
                         source=source)


def load_exemplar(path: str | Path) -> tuple[str, str]:
    """(id, text) of the one prototype story in ``path``: a .txt file, or a CSV/JSONL with one story."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"exemplar={str(path)!r} is a folder; exemplar= takes one story file "
                         f"(use exemplars= for a set)")
    if not path.is_file():
        raise InputError(f"exemplar={str(path)!r}: no such file")
    if path.suffix not in (".txt", ".csv", ".jsonl", ".json"):
        raise InputError(f"exemplar={str(path)!r}: expected a .txt file, or a .csv/.jsonl holding one story")
    stories = load_stories(path).frame
    if len(stories) != 1:
        raise InputError(f"exemplar={str(path)!r} holds {len(stories)} stories; exemplar= takes exactly one "
                         f"(use exemplars= for a set)")
    return str(stories["story_id"].iloc[0]), stories["text"].iloc[0] or ""


def load_exemplar_set(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) of each exemplar: a folder of .txt files (metadata.csv ignored), a CSV/JSONL, or one .txt."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"exemplars={str(path)!r}: no such file or folder")
    try:
        stories = load_stories(path).frame
    except InputError as error:
        raise InputError(f"exemplars={str(path)!r}: {error}") from None
    return [(str(row.story_id), row.text or "") for row in stories.itertuples()]


def greedy_prototypes(frame: pd.DataFrame, max_temperature: float) -> tuple[dict[Any, int], str]:
    """Per prompt_id, the index (row position) of the run's greedy story, and how they were chosen.

    The greedy story is the one at temperature 0, or at the lowest temperature
    when that is <= ``max_temperature`` (the paper's 0.001); of several, the
    first sample_index (then story_id) with non-empty text. Without a
    ``prompt_id`` column, all stories share one prompt.
    """
    if "temperature" not in frame:
        return {}, "the stories have no temperature, so no greedy story can be found"
    temperature = pd.to_numeric(frame["temperature"], errors="coerce")
    groups = frame["prompt_id"].astype(str) if "prompt_id" in frame else pd.Series("", index=frame.index)
    chosen: dict[Any, int] = {}
    for prompt_id, members in groups.groupby(groups).groups.items():
        lowest = temperature.loc[members].min()
        if not np.isfinite(lowest) or lowest > max_temperature:
            continue
        candidates = frame.loc[[m for m in members if temperature.loc[m] == lowest]]
        candidates = candidates[candidates["text"].fillna("").str.strip() != ""]
        if candidates.empty:
            continue
        order = ["sample_index", "story_id"] if "sample_index" in candidates else ["story_id"]
        chosen[prompt_id] = frame.index.get_loc(candidates.sort_values(order).index[0])
    how = (f"per prompt_id, the story at temperature 0 or at the lowest temperature if <= {max_temperature} "
           f"(first sample_index)")
    return chosen, how


def prompt_groups(frame: pd.DataFrame) -> list[Optional[str]]:
    """The key ``greedy_prototypes`` groups each story under."""
    if "prompt_id" in frame:
        return frame["prompt_id"].astype(str).tolist()
    return [""] * len(frame)
