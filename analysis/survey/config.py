"""Typed configuration of the survey export and import.

The dataclasses are registered in Hydra's ConfigStore (``survey_export_schema``,
``survey_import_schema``); ``conf/survey_export.yaml`` and
``conf/survey_import.yaml`` hold the values. A misspelt key or a value of the
wrong type fails when the config is composed; range checks run in
``__post_init__`` when ``OmegaConf.to_object`` builds the object, before any
file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Optional
from urllib.parse import urlsplit

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from analysis.criteria import SCALE
from experiments.errors import HarnessInputError, check, member


class SurveyInputError(HarnessInputError):
    """The survey's bad input or configuration; the message names the file, row, field or value."""


SurveyError = SurveyInputError  # the name the survey modules use

_check = partial(check, error=SurveyInputError)
_choice = partial(member, error=SurveyInputError)


class ShortSettings(str, Enum):
    """What to do with a setting that has fewer distinct stories than ``stories_per_setting``.

    A greedy setting (temperature near 0) often writes the same story every
    time, so this happens in real sweeps.
    """

    error = "error"  # stop and say which settings are short
    drop = "drop"  # leave those settings out of the survey (reported)
    repeat = "repeat"  # keep them; their fewer stories are each rated more often (reported)


class Delimiter(str, Enum):
    """The field separator of the input CSVs."""

    auto = "auto"  # from the header (an ambiguous file is an error naming it)
    comma = "comma"
    semicolon = "semicolon"  # what spreadsheets save in many European locales
    tab = "tab"


class DecimalMark(str, Enum):
    """The decimal mark of the numbers in the input CSVs."""

    auto = "auto"  # point in comma-separated files; otherwise from the numbers (both kinds: an error)
    point = "point"  # 1.5
    comma = "comma"  # 1,5


class OnInvalid(str, Enum):
    """The exclusion rule for rows that fail validation."""

    error = "error"  # stop at the first kind of problem, naming the rows
    # Drop the offending (participant, story) rows, and every row of a response that is itself at fault
    # (incomplete, from another survey, a participant question out of range); report them.
    drop_rows = "drop_rows"
    drop_participants = "drop_participants"  # drop every row of a participant with any problem; report them


@dataclass
class ExportConfig:
    # The run to draw stories from: RUN_DIR/stories.jsonl.
    run_dir: str = MISSING
    # Where the survey goes: OUT_DIR/participant/ (shown to people) and OUT_DIR/researcher/ (the key).
    out_dir: str = "${run_dir}/survey"
    participants: int = 36
    stories_per_participant: int = 5
    practice: int = 2  # practice stories shown to everyone before the packet (not analysed)
    stories_per_setting: int = 5  # distinct stories drawn from each setting
    seed: int = 0
    # A text file with the exemplar story; default: the run's lowest-temperature story.
    exemplar: Optional[str] = None
    short_settings: ShortSettings = ShortSettings.error
    title: str = "Story evaluation"
    # Where the HTML survey sends people when they are done, e.g. Prolific's completion link.
    completion_url: Optional[str] = None
    # Optional consent statement; when given, the HTML survey asks for a tick before it starts.
    consent_text: Optional[str] = None
    # Resolution of the 1-5 sliders of the HTML survey (the paper's sliders kept three decimals).
    slider_step: float = 0.001
    # Replace the files of an earlier export in out_dir.
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.short_settings = _choice(ShortSettings, self.short_settings, "short_settings")
        _check(self.participants >= 1, "participants", self.participants, "an integer >= 1")
        _check(self.stories_per_participant >= 1, "stories_per_participant", self.stories_per_participant,
               "an integer >= 1")
        _check(self.practice >= 0, "practice", self.practice, "an integer >= 0")
        _check(self.stories_per_setting >= 1, "stories_per_setting", self.stories_per_setting, "an integer >= 1")
        _check(math.isfinite(self.slider_step) and 0 < self.slider_step <= 1, "slider_step", self.slider_step,
               "a number in (0, 1]")
        if self.completion_url is not None:
            parts = urlsplit(self.completion_url)
            _check(parts.scheme in ("http", "https") and bool(parts.netloc), "completion_url", self.completion_url,
                   "an absolute http:// or https:// address")


@dataclass
class ImportConfig:
    # A CSV file, a folder of CSVs (e.g. every download of the HTML survey) or a glob pattern.
    input: str = MISSING
    # The long ratings table to write (CSV).
    out: str = MISSING
    # auto (detected from the columns) or a format of analysis/survey/formats: html, long, qualtrics, tidy.
    format: str = "auto"
    delimiter: Delimiter = Delimiter.auto  # comma, semicolon or tab; "," ";" also accepted from Python
    decimal: DecimalMark = DecimalMark.auto  # point or comma; "." "," also accepted from Python
    # The unblinding key (researcher/unblinding_key.csv of the export): joins story ids and settings.
    key: Optional[str] = None
    on_invalid: OnInvalid = OnInvalid.error
    # Column holding the participant id in a Qualtrics export; default: RandomID, PROLIFIC_PID, then ResponseId.
    participant_column: Optional[str] = None
    scale_min: float = float(SCALE[0])  # default: the criteria's scale (analysis/criteria.py)
    scale_max: float = float(SCALE[1])
    keep_practice: bool = False  # also write the practice ratings (marked in a `practice` column)

    def __post_init__(self) -> None:
        from analysis.survey.formats import names  # the registry imports this module

        _check(self.format in ("auto", *names()), "format", self.format, f"one of auto, {', '.join(names())}")
        self.delimiter = _choice(Delimiter, {",": "comma", ";": "semicolon", "\t": "tab"}.get(
            self.delimiter, self.delimiter), "delimiter")
        self.decimal = _choice(DecimalMark, {".": "point", ",": "comma"}.get(self.decimal, self.decimal), "decimal")
        self.on_invalid = _choice(OnInvalid, self.on_invalid, "on_invalid")
        _check(math.isfinite(self.scale_min) and math.isfinite(self.scale_max) and self.scale_min < self.scale_max,
               "scale_min/scale_max", (self.scale_min, self.scale_max), "finite numbers with scale_min < scale_max")


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="survey_export_schema", node=ExportConfig)
    store.store(name="survey_import_schema", node=ImportConfig)
