"""The metrics stage.

    python -m metrics.compute stories=RUN_DIR/stories.jsonl out_dir=RUN_DIR
    python -m metrics.compute stories=../shared/paper/survey_stories \\
        exemplar=../shared/paper/exemplar.txt out_dir=outputs/survey_metrics

writes, each atomically (``experiments.files``: temp file, then ``os.replace``):

- ``metrics.parquet``: ``story_id`` plus one column per metric;
- one file per setting-level family (``diversity.parquet``): one row per
  ``setting_id`` (its parameters, then the family's measures);
- ``exemplars.json``: the prototype(s) and exemplar set used, with the values
  families give each exemplar (the PCA coordinates);
- ``embeddings.parquet`` (when a family used the embedding model): ``story_id``
  and ``embedding``, each story's L2-normalised vector (null for a story
  without one), so an analysis can recompute diversity on any subset of
  stories (``analysis.quality_diversity`` bootstraps it);
- ``metrics.json``: the sidecar: how each column was computed (models, units,
  pooling, PCA explained variance), which stories got NaN and why.

Other stages call ``compute_story_metrics`` (a DataFrame in, a DataFrame and
the sidecar out) or ``compute_metrics`` (the typed config of the command).

This module knows no metric by name: it runs the families of
``metrics.registry`` that ``metrics.enabled`` selects, by what each declares
(level, needs, output file).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments.files import atomic_path, utc_now, write_atomic
from experiments.manifest import harness_version, package_versions
from experiments.paths import conf_path
from metrics import registry
from metrics.cache import ContentCache
from metrics.config import ComputeMetricsConfig, MetricsConfig, register_configs
from metrics.context import Exemplar, Level, MeasureContext, MetricFamily, NanLog, Need, TextEmbedder, TextScorer
from metrics.embeddings import CachedEmbedder, SentenceTransformerEmbedder, resolve_model_dir
from metrics.inputs import (InputError, greedy_prototypes, load_exemplar, load_exemplar_set, load_stories,
                            prompt_groups)
from metrics.scorer import check_scorer_path, load_scorer
from metrics.text import LONE_SURROGATE, degenerate_notes, has_content, normalise_line_breaks, replace_lone_surrogates

log = logging.getLogger(__name__)

register_configs()

METRICS_FILE = "metrics.parquet"
EXEMPLARS_FILE = "exemplars.json"
EMBEDDINGS_FILE = "embeddings.parquet"
SIDECAR_FILE = "metrics.json"


class _FirstExemplar:
    def __repr__(self) -> str:
        return "FIRST_EXEMPLAR"


# ``prototype=`` default of compute_story_metrics: the first exemplar is the prototype.
FIRST_EXEMPLAR = _FirstExemplar()


@dataclass
class Measurement:
    story_metrics: pd.DataFrame
    # Setting-level family name -> its table (one row per setting_id).
    settings: dict[str, pd.DataFrame]
    sidecar: dict[str, Any]
    exemplars: list[Exemplar]
    # Field -> exemplar_id -> value, from the families that ran (for exemplars.json).
    exemplar_values: dict[str, dict[str, Any]]
    # One row per story (NaN rows for stories without one), when a family used the embedding model.
    story_embeddings: Optional[np.ndarray] = None


# ---------------------------------------------------------------- the inputs


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _normalised(text: str, line_breaks: bool) -> str:
    text = replace_lone_surrogates(text)
    return normalise_line_breaks(text) if line_breaks else text


def _validated_texts(stories: pd.DataFrame, nan_log: NanLog, normalise: bool) -> list[str]:
    texts = []
    for index, value in enumerate(stories["text"].tolist()):
        if _missing(value):
            nan_log.note(index, "text is null: measured as empty")
            value = ""
        if not isinstance(value, str):
            raise InputError(f"story {stories['story_id'].iloc[index]!r}: text is a {type(value).__name__}, "
                             f"not a string")
        if LONE_SURROGATE.search(value):
            nan_log.note(index, "invalid Unicode (unpaired surrogates) replaced by U+FFFD")
        texts.append(_normalised(value, normalise))
    return texts


def _check_stories(stories: pd.DataFrame) -> None:
    if not isinstance(stories, pd.DataFrame):
        raise TypeError(f"stories must be a pandas DataFrame, got {type(stories).__name__}")
    missing = [c for c in ("story_id", "text") if c not in stories.columns]
    if missing:
        raise InputError(f"stories: missing column(s) {missing}; needed: story_id, text "
                         f"(optional: prompt, token_logprobs, setting_id and setting parameters)")
    ids = stories["story_id"]
    if ids.isna().any():
        raise InputError(f"stories: {int(ids.isna().sum())} rows have no story_id")
    duplicated = ids[ids.astype(str).duplicated()].astype(str).unique().tolist()
    if duplicated:
        raise InputError(f"stories: story_id values must be unique; repeated: {duplicated[:10]}")


def _optional_column(stories: pd.DataFrame, column: str) -> Optional[list[Any]]:
    if column not in stories.columns:
        return None
    return [None if _missing(v) else v for v in stories[column].tolist()]


def _check_exemplars(exemplars: Sequence[Exemplar]) -> None:
    for exemplar in exemplars:
        if not isinstance(exemplar.text, str) or not has_content(exemplar.text):
            raise InputError(f"exemplar {exemplar.exemplar_id!r} ({exemplar.source}) is empty; "
                             f"an exemplar must be a non-empty story")


def _needs(config: MetricsConfig) -> frozenset[Need]:
    """What the enabled families need, together."""
    return frozenset().union(*(family.needs_for(config) for family in registry.selected(config.enabled)))


def _check_models(config: MetricsConfig) -> None:
    """Fail before any work when a model the enabled metrics need is missing."""
    needs = _needs(config)
    if Need.embedding in needs:
        resolve_model_dir(config.embedding)
    if Need.scorer in needs:
        check_scorer_path(config.scorer)


# ---------------------------------------------------------------- measuring


def _embedder_factory(config: MetricsConfig, embedder: Optional[TextEmbedder],
                      cache: Optional[ContentCache]) -> Callable[[], TextEmbedder]:
    def make() -> TextEmbedder:
        base = embedder if embedder is not None else SentenceTransformerEmbedder(config.embedding, config.progress)
        return CachedEmbedder(base, cache) if cache is not None else base
    return make


def _scorer_factory(config: MetricsConfig, scorer: Optional[TextScorer]) -> Callable[[], TextScorer]:
    return lambda: scorer if scorer is not None else load_scorer(config.scorer)


def _undeclared(need: Need, families: Sequence[MetricFamily]) -> Callable[[], Any]:
    """A model factory for a model no selected family declared: using it is a bug in a declaration."""
    def fail() -> Any:
        raise RuntimeError(f"a metric family used the {need.value} model without declaring it: one of "
                           f"{[family.name for family in families]} needs Need.{need.value} in its needs "
                           f"(or config_needs)")
    return fail


def _run_family(family: MetricFamily, context: MeasureContext, stories: pd.DataFrame,
                setting_columns: list[str]) -> tuple[Any, dict[str, Any]]:
    """One family's compute; checks that it wrote only exemplar fields it declares."""
    before = set(context.exemplar_values)
    if family.level is Level.story:
        result = family.compute(context)
    else:
        result = family.compute(context, stories, setting_columns)
    undeclared = set(context.exemplar_values) - before - set(family.exemplar_fields)
    if undeclared:
        raise RuntimeError(f"metric family {family.name!r} wrote exemplar fields {sorted(undeclared)} it does not "
                           f"declare (exemplar_fields)")
    return result


def _account_for_nans(frame: pd.DataFrame, nan_log: NanLog) -> None:
    """Every NaN gets a reason (a missing one is a bug, said so); reasons are logged once per group."""
    ids = frame["story_id"].tolist()
    for column in frame.columns[1:]:
        explained = nan_log.explained(column)
        nan_positions = np.flatnonzero(frame[column].isna().to_numpy())
        unexplained = [int(i) for i in nan_positions if ids[i] not in explained]
        if unexplained:
            nan_log.nan(column, unexplained, "no reason recorded (a bug: please report)")
    # A column that is NaN for every story for one reason (say, no exemplar set was
    # given) is a choice, not a problem: one line for all such columns.
    whole_columns: dict[str, list[str]] = {}
    for column, by_reason in nan_log.reasons.items():
        for reason, story_ids in by_reason.items():
            if len(story_ids) == len(ids) and len(by_reason) == 1 and "a bug" not in reason:
                whole_columns.setdefault(reason, []).append(column)
                continue
            shown = ", ".join(story_ids[:5]) + (f" and {len(story_ids) - 5} more" if len(story_ids) > 5 else "")
            log.warning("%s is NaN for %d stor%s: %s [%s]", column, len(story_ids),
                        "y" if len(story_ids) == 1 else "ies", reason, shown)
    for reason, columns in whole_columns.items():
        log.info("NaN for every story (%s): %s", reason, ", ".join(columns))
    for note, story_ids in nan_log.notes.items():
        log.info("%d stor%s: %s", len(story_ids), "y" if len(story_ids) == 1 else "ies", note)


def measure(stories: pd.DataFrame, exemplars: Sequence[Exemplar], prototype_of: Sequence[Optional[int]],
            config: MetricsConfig, *, setting_columns: Optional[list[str]] = None, with_settings: bool = False,
            no_prototype_reason: str = "no prototype given",
            no_exemplar_set_reason: str = "no exemplar set given",
            embedder: Optional[TextEmbedder] = None, scorer: Optional[TextScorer] = None) -> Measurement:
    """Every enabled metric for ``stories`` against ``exemplars``.

    ``prototype_of[i]`` is the index in ``exemplars`` of story i's prototype
    (or None); the exemplar set is the exemplars whose role includes "set".
    Setting-level families run (per ``setting_id``) when ``with_settings`` is on.
    """
    _check_stories(stories)
    _check_exemplars(exemplars)
    if len(prototype_of) != len(stories):
        raise ValueError(f"prototype_of has {len(prototype_of)} entries for {len(stories)} stories")
    stories = stories.reset_index(drop=True)
    story_ids = stories["story_id"].astype(str).tolist()
    nan_log = NanLog(story_ids)
    texts = _validated_texts(stories, nan_log, config.normalise_line_breaks)
    exemplars = [Exemplar(e.exemplar_id, _normalised(e.text, config.normalise_line_breaks), e.role, e.source)
                 for e in exemplars]
    for index, text in enumerate(texts):
        for note in degenerate_notes(text):
            nan_log.note(index, note)
    cache = ContentCache() if config.cache else None
    prompts = _optional_column(stories, "prompt") or [None] * len(texts)
    # A model is loaded only if a selected family needs it, and then only when first used.
    families = registry.selected(config.enabled)
    needs = _needs(config)
    embedder_factory = (_embedder_factory(config, embedder, cache) if Need.embedding in needs
                        else _undeclared(Need.embedding, families))
    scorer_factory = _scorer_factory(config, scorer) if Need.scorer in needs else _undeclared(Need.scorer, families)
    context = MeasureContext(
        story_ids=story_ids, texts=texts, config=config,
        prompts=[p if isinstance(p, str) else None for p in prompts],
        token_logprobs=_optional_column(stories, "token_logprobs"),
        stored=stories,
        exemplars=list(exemplars), prototype_of=list(prototype_of),
        exemplar_set=[j for j, e in enumerate(exemplars) if "set" in e.role.split("+")],
        nan_log=nan_log, embedder_factory=embedder_factory, scorer_factory=scorer_factory, cache=cache,
        no_prototype_reason=no_prototype_reason, no_exemplar_set_reason=no_exemplar_set_reason)

    columns: dict[str, Any] = {"story_id": story_ids}
    settings: dict[str, pd.DataFrame] = {}
    described: dict[str, Any] = {}
    timing: dict[str, float] = {}
    for family in families:
        if family.level is Level.setting:
            if not with_settings:
                described[family.name] = {"skipped": f"{family.name} per setting is measured by compute_metrics "
                                                     f"(python -m metrics.compute), into {family.file}"}
                continue
            if "setting_id" not in stories:
                raise InputError(f"stories: {family.name} needs a setting_id column")
        started = time.perf_counter()
        result, info = _run_family(family, context, stories, setting_columns or [])
        timing[family.name] = round(time.perf_counter() - started, 3)
        if family.level is Level.story:
            clash = sorted(set(result) & set(columns))
            if clash:
                raise RuntimeError(f"metric family {family.name!r} writes column(s) {clash}, already written")
            columns.update(result)
        else:
            settings[family.name] = result
        described.update(info)
    frame = pd.DataFrame(columns)
    _account_for_nans(frame, nan_log)
    sidecar = _sidecar(context, frame, described, timing, exemplars, families)
    return Measurement(story_metrics=frame, settings=settings, sidecar=sidecar, exemplars=list(exemplars),
                       exemplar_values=dict(context.exemplar_values),
                       story_embeddings=context.story_embeddings if context.embeddings_computed else None)


def _plain(value: Any) -> Any:
    """JSON-ready: enums to their values, numpy to Python, NaN and inf to None."""
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sidecar(context: MeasureContext, frame: pd.DataFrame, described: dict[str, Any], timing: dict[str, float],
             exemplars: Sequence[Exemplar], families: Sequence[MetricFamily]) -> dict[str, Any]:
    metric_columns = list(frame.columns[1:])
    sections = {key: value for key, value in described.items() if key not in metric_columns}
    if context.embeddings_computed:
        sections["embedding"] = {**context.embedder.describe(),
                                 "stories_over_window": int((context.story_token_counts >
                                                             context.embedder.describe()["window_tokens"]).sum())}
    prototypes = sorted({p for p in context.prototype_of if p is not None})
    return _plain({
        "harness_version": harness_version(),
        "created_at": utc_now(),
        "n_stories": context.n,
        "metrics_enabled": [family.name for family in families],
        "columns": {column: described.get(column, {}) for column in metric_columns},
        "text_normalisation": ("<br> tags and CR/CRLF -> newline; text otherwise measured as written"
                               if context.config.normalise_line_breaks else "none"),
        **sections,
        "exemplars": {
            "prototype": ([exemplars[p].exemplar_id for p in prototypes] or None),
            "stories_with_prototype": sum(p is not None for p in context.prototype_of),
            "no_prototype_reason": context.no_prototype_reason if None in context.prototype_of else None,
            "set": [exemplars[j].exemplar_id for j in context.exemplar_set] or None,
            "no_set_reason": None if context.exemplar_set else context.no_exemplar_set_reason,
            "items": [{"exemplar_id": e.exemplar_id, "role": e.role, "source": e.source,
                       "chars": len(e.text), "sha256": hashlib.sha256(e.text.encode()).hexdigest()}
                      for e in exemplars],
        },
        **context.nan_log.as_dict(),
        "config": context.config,
        "timing_s": timing,
        "packages": package_versions(),
    })


# ---------------------------------------------------------------- the Python API


def compute_story_metrics(stories: pd.DataFrame, exemplars: list[str], config: MetricsConfig, *,
                          prototype: Union[str, Mapping[str, str], None, _FirstExemplar] = FIRST_EXEMPLAR,
                          exemplar_ids: Optional[Sequence[str]] = None,
                          embedder: Optional[TextEmbedder] = None,
                          scorer: Optional[TextScorer] = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-story metrics of ``stories`` against ``exemplars``: (story_id + one column per metric, sidecar).

    ``stories`` has ``story_id`` and ``text``, optionally ``prompt`` (the raw
    prompt string, for the re-scored perplexity) and ``token_logprobs``.
    ``exemplars`` is the exemplar set. The prototype is, by default, its
    first element; or ``prototype`` gives a text, a mapping prompt_id -> text
    (stories then need a prompt_id column), or None for no prototype.
    Setting-level families (diversity) are left to ``compute_metrics``.
    """
    if exemplar_ids is not None and len(exemplar_ids) != len(exemplars):
        raise ValueError(f"{len(exemplar_ids)} exemplar_ids for {len(exemplars)} exemplars")
    ids = list(exemplar_ids) if exemplar_ids is not None else [f"exemplar_{i}" for i in range(len(exemplars))]
    items = [Exemplar(ids[i], text, "set", "given") for i, text in enumerate(exemplars)]
    n = len(stories)
    no_prototype = "no prototype given"
    if prototype is FIRST_EXEMPLAR:
        prototype_of: list[Optional[int]] = [0 if items else None] * n
        if items:
            items[0] = Exemplar(items[0].exemplar_id, items[0].text, "prototype+set", "given (first exemplar)")
        else:
            no_prototype = "no exemplars given"
    elif prototype is None:
        prototype_of = [None] * n
    elif isinstance(prototype, str):
        items.insert(0, Exemplar("prototype", prototype, "prototype", "given"))
        prototype_of = [0] * n
    elif isinstance(prototype, Mapping):
        if "prompt_id" not in stories:
            raise InputError("stories: a prototype per prompt_id needs a prompt_id column")
        start = len(items)
        keys = list(prototype)
        items += [Exemplar(f"prototype:{key}", prototype[key], "prototype", f"given for prompt_id {key}")
                  for key in keys]
        position = {key: start + k for k, key in enumerate(keys)}
        prototype_of = [position.get(str(p)) for p in stories["prompt_id"].tolist()]
        no_prototype = "no prototype given for the story's prompt_id"
    else:
        raise TypeError(f"prototype must be a str, a mapping prompt_id -> str, or None; "
                        f"got {type(prototype).__name__}")
    measurement = measure(stories, items, prototype_of, config, no_prototype_reason=no_prototype,
                          no_exemplar_set_reason="no exemplars given", embedder=embedder, scorer=scorer)
    return measurement.story_metrics, measurement.sidecar


# ---------------------------------------------------------------- the command


def _prototypes_for(config: ComputeMetricsConfig,
                    frame: pd.DataFrame) -> tuple[list[Exemplar], list[Optional[int]], str, dict[str, Any]]:
    """The prototype exemplar(s), each story's prototype index, the reason for a missing one, and how chosen."""
    if config.exemplar:
        exemplar_id, text = load_exemplar(config.exemplar)
        return ([Exemplar(f"prototype:{exemplar_id}", text, "prototype", str(Path(config.exemplar)))],
                [0] * len(frame), "", {"prototype_source": f"exemplar={config.exemplar}"})
    if not config.greedy_prototype:
        return [], [None] * len(frame), "no exemplar= file given (and greedy_prototype=false)", {
            "prototype_source": "none"}
    chosen, how = greedy_prototypes(frame, config.greedy_max_temperature)
    groups = prompt_groups(frame)
    exemplars, index_of_group = [], {}
    for group, row in chosen.items():
        story = frame.iloc[row]
        index_of_group[group] = len(exemplars)
        where = f"prompt_id {group}, " if group else ""
        exemplars.append(Exemplar(f"greedy:{story['story_id']}", story["text"], "prototype",
                                  f"the run's greedy story {story['story_id']} ({where}temperature "
                                  f"{story['temperature']})"))
    reason = ("no exemplar= file given and no greedy story (temperature 0, or lowest temperature <= "
              f"{config.greedy_max_temperature}) for the story's prompt")
    source = {"prototype_source": "the run's greedy stories" if chosen else "none", "greedy_rule": how}
    return exemplars, [index_of_group.get(g) for g in groups], reason, source


def _parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding several types (untrusted metadata) become strings, so Arrow accepts them."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1:
                frame[column] = [None if v is None else str(v) for v in frame[column]]
    return frame


def _embeddings_table(story_ids: Sequence[str], vectors: np.ndarray) -> pd.DataFrame:
    """story_id and its float32 vector; None for a story without one (a NaN row)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    usable = np.isfinite(vectors).all(axis=1)
    return pd.DataFrame({"story_id": list(story_ids),
                         "embedding": [row if ok else None for row, ok in zip(vectors, usable)]})


def compute_metrics(config: ComputeMetricsConfig) -> dict[str, Path]:
    """Measure the stories of ``config.stories`` and write the outputs into ``config.out_dir``."""
    _check_models(config.metrics)
    loaded = load_stories(config.stories, include_practice=config.include_practice)
    frame = loaded.frame
    exemplars, prototype_of, no_prototype_reason, prototype_source = _prototypes_for(config, frame)
    no_set_reason = "no exemplar set given (exemplars=)"
    if config.exemplars:
        exemplars += [Exemplar(f"set:{exemplar_id}", text, "set", str(Path(config.exemplars)))
                      for exemplar_id, text in load_exemplar_set(config.exemplars)]
    out_dir = Path(config.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("measuring %d stories from %s (%s) against %d exemplar(s)", len(frame), loaded.source["path"],
             loaded.source["format"], len(exemplars))
    if exemplars and not any(Need.exemplars in family.needs_for(config.metrics)
                             for family in registry.selected(config.metrics.enabled)):
        log.info("no enabled metric measures stories against the exemplars")
    measurement = measure(frame, exemplars, prototype_of, config.metrics, setting_columns=loaded.setting_columns,
                          with_settings=True, no_prototype_reason=no_prototype_reason,
                          no_exemplar_set_reason=no_set_reason)
    families = {family.name: family for family in registry.families()}
    paths = {"metrics": out_dir / METRICS_FILE, "exemplars": out_dir / EXEMPLARS_FILE,
             "sidecar": out_dir / SIDECAR_FILE}
    for name in measurement.settings:
        paths[name] = out_dir / families[name].file
    if measurement.story_embeddings is not None:
        paths["embeddings"] = out_dir / EMBEDDINGS_FILE
    sidecar = measurement.sidecar
    sidecar["input"] = {**loaded.source, "setting_columns": loaded.setting_columns, **prototype_source,
                        "exemplar": config.exemplar, "exemplars": config.exemplars}
    sidecar["files"] = {name: path.name for name, path in paths.items()}
    # Every registered family's exemplar fields, null where the family did not run: one shape of record.
    fields = [field for family in families.values() for field in family.exemplar_fields]
    exemplar_records = [{"exemplar_id": e.exemplar_id, "role": e.role, "source": e.source,
                         **{field: measurement.exemplar_values.get(field, {}).get(e.exemplar_id) for field in fields},
                         "text": e.text} for e in measurement.exemplars]

    with atomic_path(paths["metrics"]) as tmp:
        measurement.story_metrics.to_parquet(tmp, index=False)
    for name, table in measurement.settings.items():
        with atomic_path(paths[name]) as tmp:
            _parquet_ready(table).to_parquet(tmp, index=False)
    if measurement.story_embeddings is not None:
        with atomic_path(paths["embeddings"]) as tmp:
            _embeddings_table(measurement.story_metrics["story_id"], measurement.story_embeddings).to_parquet(
                tmp, index=False)
    write_atomic(paths["exemplars"], json.dumps(_plain(exemplar_records), indent=1, ensure_ascii=False,
                                                allow_nan=False))
    # The sidecar last: it describes the files above.
    write_atomic(paths["sidecar"], json.dumps(_plain(sidecar), indent=1, ensure_ascii=False, allow_nan=False))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def to_typed(cfg: DictConfig) -> ComputeMetricsConfig:
    return OmegaConf.to_object(cfg)  # runs the dataclasses' range checks


@hydra.main(version_base="1.3", config_path=conf_path(), config_name="compute_metrics")
def main(cfg: DictConfig) -> None:
    compute_metrics(to_typed(cfg))


if __name__ == "__main__":
    main()
