"""What every metric family works on: the stories, the exemplars, the models
(loaded only when a family first asks), and a record of why a value is NaN;
and what a family is: a ``MetricFamily`` that declares its level (per story or
per setting), what it needs (the embedding model, the scorer, the exemplars)
and its ``compute`` function. ``metrics.registry`` collects them; the compute
entry point reads only these declarations, never a family's name.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Callable, FrozenSet, Optional, Protocol, Sequence, Tuple

import numpy as np
import pandas as pd

from metrics.cache import ContentCache
from metrics.config import MetricsConfig

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    """Turns texts into L2-normalised vectors (one row per text)."""

    def describe(self) -> dict[str, Any]: ...

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, token counts); NaN rows for texts without content."""
        ...

    def token_ids(self, text: str) -> list[int]: ...


class TextScorer(Protocol):
    """Log-likelihood of texts under a causal language model."""

    def describe(self) -> dict[str, Any]: ...

    def score(self, texts: Sequence[str], prompts: Sequence[Optional[str]], progress: bool = True) -> list[Any]:
        """A ``metrics.scorer.Score`` (summed NLL in nats, scored tokens, windows) per text."""
        ...

    def token_ids(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Exemplar:
    """One exemplar story. ``role`` is "prototype", "set" or "prototype+set"."""

    exemplar_id: str
    text: str
    role: str
    source: str


class NanLog:
    """Why each NaN is NaN (column -> reason -> story ids); notes on stories that got values anyway
    (note -> story ids)."""

    def __init__(self, story_ids: Sequence[str]):
        self.story_ids = list(story_ids)
        self.reasons: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.notes: dict[str, list[str]] = defaultdict(list)

    def nan(self, column: str, indices: Sequence[int] | range, reason: str) -> None:
        for index in indices:
            self.reasons[column][reason].append(self.story_ids[index])

    def note(self, index: int, text: str) -> None:
        self.notes[text].append(self.story_ids[index])

    def explained(self, column: str) -> set[str]:
        return {story for stories in self.reasons.get(column, {}).values() for story in stories}

    def as_dict(self) -> dict[str, Any]:
        return {
            "nan": {column: {reason: ids for reason, ids in by_reason.items()}
                    for column, by_reason in self.reasons.items()},
            "notes": dict(self.notes),
        }


@dataclass
class MeasureContext:
    """The inputs of one measurement. Texts are already normalised."""

    story_ids: list[str]
    texts: list[str]
    config: MetricsConfig
    # The exact prompt string of each story, or None.
    prompts: list[Optional[str]]
    # Stored log-probs of each story's generated tokens; None when the input has none.
    token_logprobs: Optional[list[Any]]
    exemplars: list[Exemplar]
    # Index into ``exemplars`` of each story's prototype, or None.
    prototype_of: list[Optional[int]]
    # Indices into ``exemplars`` of the exemplar set.
    exemplar_set: list[int]
    nan_log: NanLog
    embedder_factory: Callable[[], TextEmbedder]
    scorer_factory: Callable[[], TextScorer]
    cache: Optional[ContentCache] = None
    # Intermediate results shared between families (unit sequences, cache counts).
    memo: dict[str, Any] = field(default_factory=dict)
    # Why a story has no prototype, and why there is no exemplar set, in a log reader's words.
    no_prototype_reason: str = "no prototype given"
    no_exemplar_set_reason: str = "no exemplar set given"
    # Story index -> why it has no embedding (filled when embeddings are computed).
    embedding_problems: dict[int, str] = field(default_factory=dict)
    # Values a family gives each exemplar, for exemplars.json: field -> exemplar_id -> value.
    # A family fills only the fields it declares (``MetricFamily.exemplar_fields``).
    exemplar_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The input's own fields, one row per story in the order of story_ids (as metrics.inputs read
    # them), for families that measure what generation stored beside the text: ``stored_field``.
    stored: Optional[pd.DataFrame] = None

    @cached_property
    def embedder(self) -> TextEmbedder:
        return self.embedder_factory()

    @cached_property
    def scorer(self) -> TextScorer:
        return self.scorer_factory()

    @cached_property
    def _all_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """Stories then exemplars, embedded in one pass (the model batches across both)."""
        texts = self.texts + [exemplar.text for exemplar in self.exemplars]
        vectors, counts = self.embedder.embed(texts)
        for index in np.flatnonzero(~np.isfinite(vectors[: self.n]).all(axis=1)):
            self.embedding_problems[int(index)] = (
                "no text to embed (empty or whitespace-only)" if not self.texts[index].strip()
                else "the embedding model found no tokens in the text")
        return vectors, counts

    @property
    def embeddings_computed(self) -> bool:
        return "_all_embeddings" in self.__dict__

    @property
    def story_embeddings(self) -> np.ndarray:
        """One L2-normalised row per story; NaN rows for texts without content."""
        return self._all_embeddings[0][: self.n]

    @property
    def exemplar_embeddings(self) -> np.ndarray:
        return self._all_embeddings[0][self.n:]

    @property
    def story_token_counts(self) -> np.ndarray:
        """Tokens of each story under the embedding model's tokenizer."""
        return self._all_embeddings[1][: self.n]

    def embedding_nan_reason(self, index: int) -> str:
        return self.embedding_problems.get(index, "no embedding")

    @property
    def n(self) -> int:
        return len(self.texts)

    def stored_field(self, name: str) -> Optional[list[Any]]:
        """The input's field ``name``, one value per story (None where missing), or None when the
        input has no such field."""
        if self.stored is None or name not in self.stored.columns:
            return None
        return [None if _missing(value) else value for value in self.stored[name].tolist()]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


class Need(str, Enum):
    """What a family uses besides the stories and its own options.

    The compute entry point checks (before any work) and loads a model only
    when a selected family needs it; a family that touches a model it did not
    declare fails, naming the need. The exemplars are always in the context;
    declaring them says the family measures stories against them.
    """

    embedding = "embedding"  # the sentence-embedding model: context.embedder, story/exemplar embeddings
    scorer = "scorer"  # the scorer language model: context.scorer
    exemplars = "exemplars"  # the prototype(s) and/or exemplar set (without them: NaN with the context's reason)


class Level(str, Enum):
    story = "story"  # one value per story per column, in metrics.parquet
    setting = "setting"  # one row per setting_id, in the family's own file


@dataclass(frozen=True)
class MetricFamily:
    """One metric family, as the registry and the compute entry point see it.

    ``name`` is the family's entry in ``metrics.enabled`` (a ``MetricName``).
    ``compute`` of a story-level family: ``compute(context)`` ->
    ({column: one value per story}, {sidecar key: description}); of a
    setting-level family: ``compute(context, stories, setting_columns)`` ->
    (a DataFrame with one row per ``setting_id``, {sidecar key: description}),
    ``stories`` being the input frame aligned with the context.
    ``needs`` are fixed; ``config_needs(config)`` adds those that depend on
    the family's options (edit distance in model tokens needs that model).
    A setting-level family writes its table to ``file`` in the output folder.
    ``exemplar_fields`` are the keys it adds to every record of exemplars.json
    (null when the family did not run), filled through ``context.exemplar_values``.
    """

    name: str
    compute: Callable[..., Tuple[Any, dict[str, Any]]]
    level: Level = Level.story
    needs: FrozenSet[Need] = frozenset()
    config_needs: Optional[Callable[[MetricsConfig], FrozenSet[Need]]] = None
    file: Optional[str] = None
    exemplar_fields: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A MetricName member is a str; keep the plain value, so names print and compare as text.
        object.__setattr__(self, "name", str(getattr(self.name, "value", self.name)))
        object.__setattr__(self, "level", Level(self.level))
        object.__setattr__(self, "needs", frozenset(Need(need) for need in self.needs))
        object.__setattr__(self, "exemplar_fields", tuple(self.exemplar_fields))
        if not self.name:
            raise ValueError("a metric family needs a name")
        if (self.level is Level.setting) != (self.file is not None):
            raise ValueError(f"metric family {self.name!r}: a setting-level family names its output file "
                             f"(file=...), a story-level one writes columns of metrics.parquet (no file)")

    def needs_for(self, config: MetricsConfig) -> FrozenSet[Need]:
        """Everything this family uses under ``config``."""
        extra = self.config_needs(config) if self.config_needs is not None else frozenset()
        return self.needs | frozenset(Need(need) for need in extra)
