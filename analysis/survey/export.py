"""``python -m analysis.survey export``: from a run's stories to survey files.

Writes, under ``out_dir``:

- ``participant/`` (everything a participant may see, nothing that unblinds):
  the files of every survey format with a writer (:mod:`analysis.survey.formats`:
  ``survey.html`` offline survey, ``packets.csv`` long CSV for any platform,
  ``qualtrics.txt`` Advanced TXT import) and ``exemplar.txt``;
- ``researcher/``: ``unblinding_key.csv`` (blinded id -> story, setting and
  its parameters), ``design.csv`` (who rates what, unblinded),
  ``summary.json`` (config, balance counts, decisions) and the formats'
  researcher files (``qualtrics_setup.md``).

All files are written to temporary names and renamed into place only when
every one of them is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.survey.blinding import Survey, blind
from analysis.survey.config import ExportConfig, SurveyError
from analysis.survey.design import STORY_FIELDS, assign, balance_report, select_stories
from analysis.survey.files import csv_text
from analysis.survey.formats import FORMATS
from analysis.survey.formats.base import PARTICIPANT_DIR, RESEARCHER_DIR
from experiments.files import write_all_atomic
from experiments.store import stories_frame

log = logging.getLogger(__name__)

KEY_FILE = "unblinding_key.csv"
# Story fields worth keeping next to the setting in the key (the rest is bulky or per-run).
KEY_STORY_FIELDS = ("model", "model_sha256", "backend", "prompt_id", "seed", "sample_index")


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    survey: Survey
    summary: dict


def _read_exemplar(path: str | None) -> str | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise SurveyError(f"exemplar={path}: no such file (give a text file with the exemplar story)")
    return file.read_text(encoding="utf-8")


def _story_details(stories: pd.DataFrame) -> pd.DataFrame:
    """Per story id: its setting's parameters and the fields the key keeps."""
    parameters = [c for c in stories.columns if c not in STORY_FIELDS]
    kept = ["story_id", *[c for c in KEY_STORY_FIELDS if c in stories.columns], *parameters]
    details = stories[kept].copy()
    details["story_id"] = details["story_id"].astype(str)
    return details


def find_leaks(files: dict[str, str], secrets: set[str], shown_texts: list[str]) -> list[str]:
    """Secrets (setting ids, story ids, model names) that occur as whole words in participant files.

    A secret that happens to occur in a story text itself is not a leak, and
    strings shorter than 4 characters are too common to test.
    """
    shown = "\n".join(shown_texts)
    candidates = sorted((s for s in secrets if len(s) >= 4 and s not in shown), key=len, reverse=True)
    if not candidates:
        return []
    pattern = re.compile(r"(?<![0-9A-Za-z])(" + "|".join(map(re.escape, candidates)) + r")(?![0-9A-Za-z])")
    return [f"{secret!r} in {name}" for name, text in files.items() for secret in sorted(set(pattern.findall(text)))]


def format_files(survey: Survey, config: ExportConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(participant files, researcher files) of every format that has a writer, by file name."""
    folders: dict[str, dict[str, str]] = {PARTICIPANT_DIR: {}, RESEARCHER_DIR: {}}
    for survey_format in FORMATS:
        for relative, text in (survey_format.write(survey, config) if survey_format.write else {}).items():
            folder, _, name = relative.partition("/")
            if folder not in folders or not name or "/" in name:
                raise ValueError(f"format {survey_format.name} writes {relative!r}; "
                                 f"allowed: {PARTICIPANT_DIR}/NAME or {RESEARCHER_DIR}/NAME")
            if name in folders[folder]:
                raise ValueError(f"format {survey_format.name} writes {relative}, which another format writes")
            folders[folder][name] = text
    return folders[PARTICIPANT_DIR], folders[RESEARCHER_DIR]


def export_survey(config: ExportConfig) -> ExportResult:
    run_dir = Path(config.run_dir)
    stories_path = run_dir / "stories.jsonl"
    if not stories_path.is_file():
        raise SurveyError(f"run_dir={run_dir}: no stories.jsonl in it (run the generate stage first)")
    out_dir = Path(config.out_dir)
    earlier = [p for p in (out_dir / PARTICIPANT_DIR, out_dir / RESEARCHER_DIR) if p.exists()]
    if earlier and not config.overwrite:
        raise SurveyError(f"out_dir={out_dir} already holds a survey export ({', '.join(map(str, earlier))}); "
                          "choose another out_dir or set overwrite=true")
    exemplar_text = _read_exemplar(config.exemplar)

    stories = stories_frame(stories_path)
    selection_rng, design_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    # Ids also depend on the run, so two runs exported with the same seed never share blinded ids
    # (a key could otherwise silently unblind another survey's ratings).
    run_digest = hashlib.sha256("\n".join(sorted(stories["story_id"].astype(str))).encode("utf-8")).digest()
    id_rng = np.random.default_rng([config.seed, int.from_bytes(run_digest[:8], "big")])
    selection = select_stories(stories, config.stories_per_setting, config.practice, config.short_settings,
                               selection_rng, exemplar_text=exemplar_text, source=str(stories_path))
    slots = assign(selection, config.participants, config.stories_per_participant, design_rng)
    survey, key, design = blind(selection, slots, config.participants, id_rng)

    details = _story_details(stories)
    key = key.merge(details, on="story_id", how="left")
    design = design.merge(details, on="story_id", how="left")
    report = balance_report(slots, selection)
    for note in report["notes"]:
        log.warning("%s", note)

    participant_files, researcher_files = format_files(survey, config)
    participant_files["exemplar.txt"] = survey.exemplar.text + "\n"
    secrets = set(key["setting_id"].dropna().astype(str)) | set(key["story_id"].dropna().astype(str))
    for column in ("model", "model_sha256"):
        if column in key:
            secrets |= set(key[column].dropna().astype(str))
    shown = [survey.exemplar.text, *(s.text for s in survey.practice),
             *(s.text for p in survey.packets for s in p.stories)]
    leaks = find_leaks(participant_files, secrets, shown)
    if leaks:  # a bug, never expected: refuse to write a survey that unblinds itself
        raise SurveyError("participant-facing files would reveal: " + "; ".join(leaks[:5]))

    summary = {
        "survey_id": survey.survey_id,
        "stories_file": str(stories_path),
        "config": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(config).items()},
        "participants": config.participants,
        "stories_per_participant": config.stories_per_participant,
        "practice_stories": len(survey.practice),
        "balance": report,
        "exemplar_story_id": selection.exemplar.story_id or None,
    }
    files = {out_dir / PARTICIPANT_DIR / name: text for name, text in participant_files.items()}
    files[out_dir / RESEARCHER_DIR / KEY_FILE] = csv_text(key)
    files[out_dir / RESEARCHER_DIR / "design.csv"] = csv_text(design)
    files[out_dir / RESEARCHER_DIR / "summary.json"] = json.dumps(summary, indent=2, default=str) + "\n"
    files.update({out_dir / RESEARCHER_DIR / name: text for name, text in researcher_files.items()})
    write_all_atomic(files)
    return ExportResult(out_dir, {f"{p.parent.name}/{p.name}": p for p in files}, survey, summary)
