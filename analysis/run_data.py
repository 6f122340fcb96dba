"""Read a run directory into one tidy frame: one row per story, setting parameters and metrics as columns."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.config import AnalysisInputError
from experiments.store import story_table

log = logging.getLogger(__name__)


class RunError(AnalysisInputError):
    """A run directory that cannot be analysed."""


@dataclass
class RunData:
    run_dir: Path
    stories: pd.DataFrame  # story_id, setting_id, setting_label, each setting column, each metric
    setting_keys: list[str]  # the setting columns (experiments.store.story_table's: seed is base_seed)
    swept: list[str]  # numeric setting keys that vary across stories
    metrics: list[str]  # metric columns usable as predictors
    settings_order: list[str]  # setting ids sorted by their swept values
    setting_labels: dict[str, str]  # "temperature=0.7, top_p=0.9"
    setting_ticks: dict[str, str]  # "0.7, 0.9": short, for axis ticks (the axis names the parameters)
    setting_titles: dict[str, str]  # one "key=value" per line, for panel titles
    exemplar_points: list[tuple[float, float]] = field(default_factory=list)
    sidecar: dict = field(default_factory=dict)
    diversity: pd.DataFrame | None = None
    job_configs: dict[str, str] = field(default_factory=dict)
    manifest: str | None = None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def exemplar_points(sidecar: dict) -> list[tuple[float, float]]:
    """Exemplar coordinates in the shared PCA: ``metrics.json["pca"]["exemplar_coordinates"]``.

    That is ``{exemplar_id: [x, y] or null}`` (null: the exemplar had no embedding), as the
    metrics stage writes it; a run without it simply gets no exemplar marker.
    """
    pca = sidecar.get("pca")
    coordinates = pca.get("exemplar_coordinates") if isinstance(pca, dict) else None
    return [(float(point[0]), float(point[1])) for point in (coordinates or {}).values() if point is not None]


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _labels(row: pd.Series, swept: Sequence[str]) -> tuple[str, str, str]:
    """(label, tick, title) of one setting."""
    if not swept:
        return (str(row["setting_id"]),) * 3
    pairs = [f"{key}={_value(row[key])}" for key in swept]
    # Panel titles are short (3 significant digits) so that panels at column width do not collide.
    short = [f"{_short_key(key)} = {_compact(row[key])}" for key in swept]
    return ", ".join(pairs), ", ".join(_value(row[key]) for key in swept), "\n".join(short)


def _compact(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _short_key(key: str) -> str:
    return {"temperature": "T", "repetition_penalty": "rep. penalty", "presence_penalty": "presence",
            "frequency_penalty": "frequency"}.get(key, key)


def load_run(run_dir: str | Path, exclude_parameters: Sequence[str] = ("seed",),
             exclude_metrics: Sequence[str] = ("pca_x", "pca_y")) -> RunData:
    run_dir = Path(run_dir)
    stories_path = run_dir / "stories.jsonl"
    if not stories_path.exists():
        raise RunError(f"{run_dir}: no stories.jsonl; run_dir must be a run written by the generate stage")
    # Only ids and settings are needed: the store's one table, streamed, without texts or log-probs.
    table = story_table(stories_path, fields=("story_id", "setting_id"))
    frame = table.frame
    if frame.empty:
        raise RunError(f"{stories_path}: no stories")
    frame["setting_id"] = [str(None) if _missing(value) else str(value)
                           for value in (frame["setting_id"] if "setting_id" in frame else [None] * len(frame))]
    setting_keys = sorted(table.setting_columns)
    frame = frame[["story_id", "setting_id", *setting_keys]]
    # A parameter is excluded by its setting key ("seed") or by its column ("base_seed").
    excluded = {column for column, key in table.setting_columns.items()
                if column in exclude_parameters or key in exclude_parameters}

    swept = []
    for key in setting_keys:
        if key in excluded or frame[key].nunique(dropna=False) < 2:
            continue
        if frame[key].nunique() < 2:
            # Set in some settings (one value) and unset in the others, say min_p in a comparison of
            # samplers: it says which sampler a setting uses, it is not a dose to regress on.
            log.info("setting key %r has one value where it is set and is unset elsewhere: not a predictor", key)
        elif pd.api.types.is_numeric_dtype(frame[key]):
            swept.append(key)
        else:
            log.info("setting key %r varies but is not numeric: used in labels, not as a predictor", key)

    metrics: list[str] = []
    metrics_path = run_dir / "metrics.parquet"
    if metrics_path.exists():
        metric_frame = pd.read_parquet(metrics_path)
        if "story_id" not in metric_frame.columns:
            raise RunError(f"{metrics_path}: no story_id column")
        metric_frame["story_id"] = metric_frame["story_id"].astype(str)
        clashing = sorted(set(metric_frame.columns) & set(frame.columns) - {"story_id"})
        if clashing:
            raise RunError(f"{metrics_path}: column(s) {clashing} clash with setting parameters of the run")
        frame = frame.merge(metric_frame, on="story_id", how="left", validate="one_to_one")
        for column in metric_frame.columns:
            if column == "story_id" or column in exclude_metrics:
                continue
            if not pd.api.types.is_numeric_dtype(metric_frame[column]):
                log.info("metric column %r is not numeric: left out of the statistics", column)
            elif metric_frame[column].notna().sum() == 0:
                log.info("metric column %r has no values (all missing): left out of the statistics", column)
            else:
                metrics.append(column)
    else:
        log.warning("%s: no metrics.parquet; the report covers settings only", run_dir)

    per_setting = frame.drop_duplicates("setting_id").sort_values(swept + ["setting_id"] if swept else ["setting_id"])
    all_labels = {row["setting_id"]: _labels(row, swept) for _, row in per_setting.iterrows()}
    labels = {key: value[0] for key, value in all_labels.items()}
    frame["setting_label"] = frame["setting_id"].map(labels)

    sidecar_path = run_dir / "metrics.json"
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
    diversity_path = run_dir / "diversity.parquet"
    job_configs = {path.parent.name: path.read_text(encoding="utf-8")
                   for path in sorted((run_dir / "jobs").glob("*/config.yaml"))}
    manifest_path = run_dir / "manifest.json"
    return RunData(
        run_dir=run_dir, stories=frame, setting_keys=setting_keys, swept=swept, metrics=metrics,
        settings_order=list(per_setting["setting_id"]), setting_labels=labels,
        setting_ticks={key: value[1] for key, value in all_labels.items()},
        setting_titles={key: value[2] for key, value in all_labels.items()},
        exemplar_points=exemplar_points(sidecar), sidecar=sidecar,
        diversity=pd.read_parquet(diversity_path) if diversity_path.exists() else None,
        job_configs=job_configs,
        manifest=manifest_path.read_text(encoding="utf-8") if manifest_path.exists() else None,
    )
