"""Typed configuration schemas of the analysis apps (report, reproduce_paper).

Registered in Hydra's ConfigStore: an unknown key or a value of the wrong type
fails when the config is composed; range checks run in ``__post_init__`` when
the entry point builds the object, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from analysis.criteria import CRITERION_NAMES, SCALE
from experiments.errors import HarnessInputError, check
from metrics.config import MetricName, MetricsConfig


class Correction(Enum):
    """Multiple-comparison correction; names as statsmodels.stats.multitest spells them."""

    none = "none"
    holm = "holm"
    fdr_bh = "fdr_bh"
    bonferroni = "bonferroni"


class AnalysisInputError(HarnessInputError):
    """The analysis stage's bad input: a configuration value outside what is allowed, or a run, ratings
    table or paper folder that cannot be analysed (``RunError``, ``RatingsError``, ``PaperDataError``)."""


_check = partial(check, error=AnalysisInputError)


@dataclass
class StatisticsConfig:
    """Choices shared by both apps."""

    # The rating columns analysed and their declared scale (values outside it are refused);
    # default: every criterion of analysis/criteria.py and its scale.
    criteria: List[str] = field(default_factory=lambda: list(CRITERION_NAMES))
    scale_min: float = float(SCALE[0])
    scale_max: float = float(SCALE[1])
    crossed_random_effects: bool = False  # add a random intercept per story, crossed with participant
    correction: Correction = Correction.none
    confidence: float = 0.95
    digits: int = 3  # rounding in LaTeX and Markdown tables (CSV keeps full precision)
    progress: bool = True

    def __post_init__(self) -> None:
        _check(0 < self.confidence < 1, "confidence", self.confidence, "a number in (0, 1)")
        _check(self.scale_min < self.scale_max, "scale_min/scale_max", (self.scale_min, self.scale_max),
               "scale_min < scale_max")
        _check(len(self.criteria) > 0 and len(set(self.criteria)) == len(self.criteria), "criteria",
               self.criteria, "a non-empty list of distinct column names")
        _check(0 <= self.digits <= 10, "digits", self.digits, "an integer in [0, 10]")

    @property
    def scale(self) -> tuple[float, float]:
        return (self.scale_min, self.scale_max)


@dataclass
class ReportConfig(StatisticsConfig):
    run_dir: str = MISSING
    ratings: Optional[str] = None  # long ratings table (CSV/TSV/Parquet); none = metrics-only report
    out_dir: str = "${run_dir}/report"
    # Setting keys never treated as swept parameters (the base seed varies by design, not as a treatment).
    exclude_parameters: List[str] = field(default_factory=lambda: ["seed"])
    # metrics.parquet columns that are not predictors (coordinates of the shared PCA).
    exclude_metrics: List[str] = field(default_factory=lambda: ["pca_x", "pca_y"])
    # The quality-diversity figure (runs with more than one sampler family): bootstrap resamples of
    # each setting's stories for its intervals, and their seed.
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.bootstrap_resamples >= 1, "bootstrap_resamples", self.bootstrap_resamples, "an integer >= 1")
        _check(self.bootstrap_seed >= 0, "bootstrap_seed", self.bootstrap_seed, "an integer >= 0")


@dataclass
class ReproducePaperConfig(StatisticsConfig):
    paper_dir: str = MISSING
    out_dir: str = MISSING
    # Re-measure the survey stories with metrics.compute; false = temperature only.
    remeasure: bool = True
    metric_predictors: List[str] = field(default_factory=lambda: ["prototype_edit_dist_norm", "prototype_cos_sim"])
    # The survey stories carry no token log-probs and the paper's model (Llama 2 70B) is not here,
    # so perplexity is off; the PCA places the 31 rated stories (and the exemplar) in 2-D.
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig(
        enabled=[MetricName.cos_sim, MetricName.edit_dist, MetricName.pca]))


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="report_schema", node=ReportConfig)
    store.store(name="reproduce_paper_schema", node=ReproducePaperConfig)
