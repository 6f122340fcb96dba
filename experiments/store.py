"""The story store: one JSON object per line in ``stories.jsonl``.

Stories are appended and flushed (and fsynced) one at a time, under a file
lock, so several processes of one sweep can share a store and a SIGKILL loses
at most the story being written. A torn last line (a write cut short) is
detected on open, moved aside to a ``.torn`` file (never silently deleted)
and reported.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Iterator, Optional

from filelock import FileLock

from experiments.errors import HarnessInputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

STORIES_FILE = "stories.jsonl"


class StoreError(HarnessInputError):
    """A story store that cannot be read as the contract says."""


def _lock_for(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock")


def _last_line_start(handle, size: int) -> int:
    """Offset of the first byte of the file's last line (its final byte excluded)."""
    end = size - 1
    while end > 0:
        start = max(0, end - (1 << 16))
        handle.seek(start)
        newline = handle.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def repair_torn_tail(path: Path) -> int:
    """Cut an incomplete last line off ``path``; return how many bytes were cut.

    The cut bytes are appended to ``<path>.torn`` so that nothing written is
    ever lost. Call with the store's lock held.
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as handle:
        last_line_start = _last_line_start(handle, size)
        handle.seek(last_line_start)
        last = handle.read()
    if last.endswith(b"\n"):
        try:
            json.loads(last)
            return 0
        except ValueError:
            pass
    torn_path = path.with_name(path.name + ".torn")
    with open(torn_path, "ab") as torn:
        torn.write(last if last.endswith(b"\n") else last + b"\n")
        torn.flush()
        os.fsync(torn.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(last_line_start)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "%s: dropped a torn last line (%d bytes, an interrupted write); kept a copy in %s",
        path, len(last), torn_path,
    )
    return len(last)


def iter_stories(path: str | os.PathLike, key: str = "story_id") -> Iterator[dict[str, Any]]:
    """Yield the stories (records keyed by ``key``) of a store one line at a time, skipping (and reporting) a
    torn last line."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such story store (expected a stories.jsonl file)")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                story = json.loads(raw)
            except ValueError as error:
                # Only the last line can lack its newline: that is a write cut short.
                if not raw.endswith(b"\n"):
                    log.warning("%s: line %d is torn (interrupted write), skipped", path, number)
                    continue
                raise StoreError(f"{path}: line {number} is not valid JSON ({error})") from None
            if not isinstance(story, dict) or key not in story:
                raise StoreError(f"{path}: line {number} has no {key!r} field")
            yield story


def unique_stories(path: str | os.PathLike, key: str = "story_id") -> Iterator[dict[str, Any]]:
    """The stories of a store in file order, streamed; the first copy wins on a duplicate id."""
    seen: set[str] = set()
    for story in iter_stories(path, key):
        if story[key] in seen:
            log.warning("%s: duplicate %s %s ignored", path, key, story[key])
            continue
        seen.add(story[key])
        yield story


def read_stories(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All stories of a store, in file order; the first copy wins on a duplicate id."""
    return list(unique_stories(path))


class StoryStore:
    """Append-only, lock-protected ``stories.jsonl`` in ``directory``.

    The set of stored ids is kept in memory and topped up from the bytes that
    other processes appended since we last looked, so checking for a
    duplicate never rereads the whole file.
    """

    def __init__(self, directory: str | os.PathLike, file_name: str = STORIES_FILE, key: str = "story_id"):
        # file_name and key let other records that are made one by one (judgments) be stored the same way.
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / file_name
        self.key = key
        self._lock = _lock_for(self.path)
        self._ids: set[str] = set()
        self._offset = 0

    def _refresh(self) -> None:
        """Repair a torn tail, then read ids from lines appended since last time."""
        repair_torn_tail(self.path)
        if not self.path.exists():
            self._ids, self._offset = set(), 0
            return
        size = self.path.stat().st_size
        if size < self._offset:  # the file was replaced or repaired: start over
            self._ids, self._offset = set(), 0
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            for raw in handle:
                if raw.strip():
                    self._ids.add(json.loads(raw)[self.key])
            self._offset = handle.tell()

    def existing_ids(self) -> set[str]:
        """Ids already stored, after repairing a torn tail left by a crash."""
        with self._lock:
            self._refresh()
            return set(self._ids)

    def append(self, story: dict[str, Any]) -> bool:
        """Write one story unless its id (its ``key`` field) is already stored; return whether written.

        The id check happens under the lock, so two processes racing on the
        same story cannot both write it.
        """
        line = (json.dumps(story, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            self._refresh()
            if story[self.key] in self._ids:
                return False
            with open(self.path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                self._offset = handle.tell()
            self._ids.add(story[self.key])
        return True


# ---------------------------------------------------------------- the store as a table
#
# story_table is the one way from stories to a table: metrics (metrics.inputs),
# analysis (analysis.run_data) and the survey export all read a store through it.

SETTING_PREFIX = "setting."
BASE_SEED = "base_seed"


@dataclass
class StoryTable:
    frame: "pd.DataFrame"  # one row per story: its own fields, then the setting's parameters
    setting_columns: dict[str, str]  # column -> the setting key it holds, in first-seen order


def setting_column(key: str, taken: Container[str]) -> str:
    """The column of setting parameter ``key``, given the names ``taken`` by the stories' own fields.

    The setting's ``seed`` is the sweep's base seed, not the story's: it becomes
    ``base_seed``. A parameter named like a field of any story in the table
    becomes ``setting.<key>`` (again, until free), so a setting never
    overwrites, nor shares a column with, a field of a story.
    """
    column = BASE_SEED if key == "seed" else key
    while column in taken:
        column = SETTING_PREFIX + column
    return column


def _float_array(value: Any) -> Any:
    """Log-probs as a float64 array (8 bytes a token, not a 32-byte Python float); None becomes NaN."""
    import numpy as np  # here, like pandas: writing stories never needs either

    if isinstance(value, list):
        try:
            return np.asarray([math.nan if v is None else v for v in value], dtype=np.float64)
        except (TypeError, ValueError):
            return value  # left as it is, for the perplexity metric to name the problem
    return value


def story_table(path: str | os.PathLike, *, with_logprobs: bool = False, with_diagnostics: bool = False,
                fields: Optional[Iterable[str]] = None,
                prepare: Optional[Callable[[int, dict[str, Any]], dict[str, Any]]] = None) -> StoryTable:
    """The store as a tidy table, one row per story (the first copy of a duplicate id), in file order.

    Every field of the story is a column as written (``seed`` is the story's
    own seed; ``story_id`` a string), or only ``fields`` (and ``story_id``) if
    given. Each parameter of ``setting`` is a column of its own (``temperature``,
    ``top_p``, ...; lists and dicts as JSON), named by ``setting_column``:
    the setting's base seed is ``base_seed``, and a parameter named like a
    story's field is ``setting.<key>``. ``token_logprobs`` is the bulk of
    the file: left out unless ``with_logprobs``, then one float64 array per story.
    ``sampler_diagnostics`` (three numbers a token) likewise: left out unless
    ``with_diagnostics``, then a dict of float64 arrays per story (or None).
    ``prepare(record, story)`` (record: 1, 2, ... over unique stories) may check
    or clean each story before it becomes a row; it returns the story to use.

    Stories are read one at a time and each is reduced to its row at once
    (log-probs and diagnostics dropped or packed), so the per-token lists of
    every story are never all in memory as Python objects.
    """
    import pandas as pd

    keep = None if fields is None else {"story_id", *fields}
    story_rows, setting_rows = [], []
    story_fields: dict[str, None] = {}  # every field of every story, kept or not
    setting_keys: dict[str, None] = {}  # in first-seen order
    for record, story in enumerate(unique_stories(path), start=1):
        if prepare is not None:
            story = prepare(record, story)
        story_fields.update(dict.fromkeys(story))
        row = {key: value for key, value in story.items()
               if key != "setting" and (keep is None or key in keep)
               and (with_logprobs or key != "token_logprobs")
               and (with_diagnostics or key != "sampler_diagnostics")}
        row["story_id"] = str(story["story_id"])
        if "token_logprobs" in row:
            row["token_logprobs"] = _float_array(row["token_logprobs"])
        if isinstance(row.get("sampler_diagnostics"), dict):
            row["sampler_diagnostics"] = {key: _float_array(value)
                                          for key, value in row["sampler_diagnostics"].items()}
        story_rows.append(row)
        setting = story.get("setting") or {}
        setting_keys.update(dict.fromkeys(setting))
        setting_rows.append({key: json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
                             for key, value in setting.items()})
    # Named once for the whole table, against the fields of every story (kept or not): a column
    # holds one thing in every row, and means the same whichever fields a caller keeps.
    taken = set(story_fields)
    setting_columns: dict[str, str] = {}
    for key in setting_keys:
        column = setting_column(key, taken)
        taken.add(column)
        setting_columns[column] = key
    frame = pd.concat([pd.DataFrame(story_rows),
                       pd.DataFrame(setting_rows, columns=list(setting_keys)).set_axis(list(setting_columns), axis=1)],
                      axis=1)
    return StoryTable(frame=frame, setting_columns=setting_columns)


def stories_frame(path: str | os.PathLike, with_logprobs: bool = False, **options: Any) -> "pd.DataFrame":
    """``story_table(...).frame``: the table alone, for callers that do not need its setting columns."""
    return story_table(path, with_logprobs=with_logprobs, **options).frame
