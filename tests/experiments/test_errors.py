"""Every stage's bad-input error is a HarnessInputError; one check helper formats them all."""

from __future__ import annotations

import json

import pytest

from analysis.config import AnalysisInputError, ReportConfig
from analysis.ratings import RatingsError
from analysis.reproduce_paper import PaperDataError
from analysis.run_data import RunError
from analysis.survey.config import ExportConfig, SurveyError, SurveyInputError
from experiments.config import ConfigError, GenerateConfigError, SamplingConfig
from experiments.errors import HarnessInputError, check, member
from experiments.prompts import PromptError
from experiments.store import StoreError, read_stories
from metrics.config import MetricsConfig, MetricsInputError
from metrics.inputs import InputError

STAGE_ERRORS = [GenerateConfigError, MetricsInputError, AnalysisInputError, SurveyInputError]


@pytest.mark.parametrize("error", [*STAGE_ERRORS, StoreError, PromptError, InputError, RunError, RatingsError,
                                   PaperDataError])
def test_every_bad_input_error_is_a_harness_input_error(error):
    assert issubclass(error, HarnessInputError) and issubclass(error, ValueError)


def test_one_error_type_per_stage_and_no_two_of_them_alike():
    assert ConfigError is GenerateConfigError and SurveyError is SurveyInputError
    assert len(set(STAGE_ERRORS)) == len(STAGE_ERRORS)
    for error in STAGE_ERRORS:  # no stage's error is another's: each names its stage
        assert [other for other in STAGE_ERRORS if issubclass(error, other)] == [error]


@pytest.mark.parametrize("build,error,message", [
    (lambda: SamplingConfig(top_p=0), GenerateConfigError, "sampling.top_p=0 is not allowed: a number in (0, 1]"),
    (lambda: MetricsConfig(workers=0), MetricsInputError, "metrics.workers=0 is not allowed"),
    (lambda: ReportConfig(run_dir="r", confidence=1.5), AnalysisInputError, "confidence=1.5 is not allowed"),
    (lambda: ExportConfig(run_dir="r", out_dir="o", participants=0), SurveyInputError, "participants=0 is not allowed"),
])
def test_each_stage_raises_its_own_error(build, error, message):
    with pytest.raises(HarnessInputError) as raised:
        build()
    assert type(raised.value) is error and str(raised.value).startswith(message)


def test_a_bad_story_store_is_a_harness_input_error(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text(json.dumps({"story_id": "a"}) + "\n{not json\n")
    with pytest.raises(HarnessInputError, match="line 2 is not valid JSON"):
        read_stories(path)


def test_check_formats_the_message_and_raises_the_given_type():
    check(True, "x", 1, "anything")
    with pytest.raises(HarnessInputError) as raised:
        check(False, "sampling.n", 0, "an integer >= 1")
    assert type(raised.value) is HarnessInputError and str(raised.value) == "sampling.n=0 is not allowed: an integer >= 1"
    with pytest.raises(SurveyInputError, match=r"^key='a' is not allowed: b$"):
        check(False, "key", "a", "b", error=SurveyInputError)


def test_member_names_the_allowed_values():
    from metrics.config import Pooling

    assert member(Pooling, "truncate", "metrics.embedding.pooling") is Pooling.truncate
    with pytest.raises(MetricsInputError,
                       match=r"^metrics.embedding.pooling='max' is not allowed: one of chunk_mean, truncate$"):
        member(Pooling, "max", "metrics.embedding.pooling", error=MetricsInputError)
