from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from metrics.compute import to_typed
from metrics.config import ComputeMetricsConfig, EditUnit, MetricName, MetricsInputError, Pooling

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="compute_metrics", overrides=list(overrides))


def test_default_config_composes_to_the_schema():
    config = to_typed(_compose("stories=s.jsonl", "out_dir=out"))
    assert isinstance(config, ComputeMetricsConfig)
    assert config.metrics.enabled == list(MetricName)
    assert config.metrics.embedding.pooling is Pooling.chunk_mean
    assert config.metrics.edit_distance.unit is EditUnit.word
    assert config.exemplar is None and config.greedy_prototype


def test_group_options_and_overrides():
    config = to_typed(_compose("stories=s", "out_dir=o", "metrics=fast", "metrics.embedding.pooling=truncate",
                               "metrics.edit_distance.unit=char", "exemplar=e.txt"))
    assert MetricName.perplexity_scorer not in config.metrics.enabled
    assert config.metrics.embedding.pooling is Pooling.truncate
    assert config.metrics.edit_distance.unit is EditUnit.char
    assert config.exemplar == "e.txt"


@pytest.mark.parametrize("override", [
    "metrics.embeding.pooling=truncate",  # typo in a key
    "metrics.embedding.pooling=mean",  # not an allowed value
    "metrics.enabled=[pca,bogus]",  # not a metric
    "metrics.scorer.max_length=long",  # wrong type
    "exemplarz=e.txt",
])
def test_mistakes_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose("stories=s", "out_dir=o", override)


@pytest.mark.parametrize("override,message", [
    ("metrics.scorer.stride=4096", "metrics.scorer.stride=4096"),
    ("metrics.enabled=[pca,pca]", "each metric at most once"),
    ("metrics.diversity.distinct_n=[0]", "metrics.diversity.distinct_n"),
    ("metrics.workers=0", "metrics.workers=0"),
])
def test_out_of_range_values_fail_before_any_work(override, message):
    with pytest.raises(MetricsInputError, match=message.replace("[", r"\[")):
        to_typed(_compose("stories=s", "out_dir=o", override))


def test_stories_and_out_dir_are_required():
    with pytest.raises(MissingMandatoryValue):
        to_typed(_compose("out_dir=o"))
