import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments.store import story_table
from metrics.compute import compute_story_metrics
from metrics.inputs import load_stories
from metrics.sampler_diagnostics import COLUMNS, record_problem, story_means
from tests.metrics.fakes import quiet_config

RECORD = {"entropy_before": [2.0, 1.0, 3.0], "entropy_after": [1.0, 0.5, 0.0], "candidates_kept": [10, 4, 1]}


def test_means_over_the_tokens_by_hand():
    means = story_means(RECORD)
    assert means["mean_entropy_before"] == pytest.approx(2.0)  # (2 + 1 + 3) / 3
    assert means["mean_entropy_after"] == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert means["mean_entropy_cut"] == pytest.approx(1.5)
    assert means["mean_candidates_kept"] == pytest.approx(5.0)  # (10 + 4 + 1) / 3
    assert set(means) == set(COLUMNS)


def test_a_temperature_above_one_gives_a_negative_cut():
    means = story_means({"entropy_before": [1.0], "entropy_after": [1.5], "candidates_kept": [49152]})
    assert means["mean_entropy_cut"] == pytest.approx(-0.5)


@pytest.mark.parametrize("record,reason", [
    (None, "no sampler_diagnostics stored"),
    (math.nan, "no sampler_diagnostics stored"),
    ([1.0, 2.0], "is a list, not a mapping"),
    ({"entropy_before": [1.0], "entropy_after": [1.0]}, "has no candidates_kept"),
    ({**RECORD, "entropy_after": [1.0, 0.5]},
     "differ in length (entropy_before 3, entropy_after 2, candidates_kept 3)"),
    ({**RECORD, "entropy_after": [1.0, None, 0.0]}, "entropy_after holds null"),
    ({**RECORD, "candidates_kept": ["a", "b", "c"]}, "candidates_kept holds non-numbers"),
    ({**RECORD, "entropy_before": [1.0, -1.0, 0.0]}, "negative values"),
    ({**RECORD, "entropy_before": 2.0}, "entropy_before is a float, not a list"),
    ({"entropy_before": [], "entropy_after": [], "candidates_kept": []}, "empty (no generated tokens)"),
])
def test_records_that_give_no_means_say_why(record, reason):
    assert reason in record_problem(record)


def test_a_valid_record_has_no_problem():
    assert record_problem(RECORD) is None
    assert record_problem({key: np.asarray(value, dtype=float) for key, value in RECORD.items()}) is None


def test_per_story_columns_and_nan_reasons_through_the_compute_entry_point():
    stories = pd.DataFrame({"story_id": ["a", "b", "c"], "text": ["One.", "Two.", "Three."],
                            "sampler_diagnostics": [RECORD, None, {**RECORD, "candidates_kept": [1]}]})
    frame, sidecar = compute_story_metrics(stories, [], quiet_config(enabled=["sampler_diagnostics"]))
    assert list(frame.columns) == ["story_id", *COLUMNS]
    assert frame.loc[0, COLUMNS].tolist() == pytest.approx([2.0, 0.5, 1.5, 5.0])
    assert frame.loc[1:, COLUMNS].isna().all().all()
    reasons = sidecar["nan"]["mean_entropy_after"]
    assert reasons[next(r for r in reasons if r.startswith("no sampler_diagnostics stored"))] == ["b"]
    assert reasons[next(r for r in reasons if "differ in length" in r)] == ["c"]
    assert "mean over tokens" in sidecar["columns"]["mean_candidates_kept"]["formula"]


def test_input_without_the_field_is_nan_for_every_story():
    stories = pd.DataFrame({"story_id": ["a", "b"], "text": ["One.", "Two."]})
    frame, sidecar = compute_story_metrics(stories, [], quiet_config(enabled=["sampler_diagnostics"]))
    assert frame[list(COLUMNS)].isna().all().all()
    assert sidecar["nan"]["mean_entropy_before"] == {"input has no sampler_diagnostics field": ["a", "b"]}


def _write_store(path):
    lines = [{"story_id": "a", "setting_id": "s", "setting": {"temperature": 1.5}, "text": "One.",
              "token_logprobs": [-1.0, -2.0, -0.5], "sampler_diagnostics": RECORD},
             {"story_id": "b", "setting_id": "s", "setting": {"temperature": 1.5}, "text": "Two.",
              "token_logprobs": [-1.0], "sampler_diagnostics": None}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_store_keeps_diagnostics_out_unless_asked_then_packs_them(tmp_path):
    path = _write_store(tmp_path / "stories.jsonl")
    assert "sampler_diagnostics" not in story_table(path, with_logprobs=True).frame
    assert "sampler_diagnostics" not in story_table(path, fields=["sampler_diagnostics"]).frame
    packed = story_table(path, with_diagnostics=True).frame["sampler_diagnostics"]
    assert packed[1] is None
    assert {key: value.dtype for key, value in packed[0].items()} == {key: np.float64 for key in RECORD}
    assert packed[0]["candidates_kept"].tolist() == [10.0, 4.0, 1.0]


def test_a_run_read_by_the_metrics_stage_carries_its_diagnostics(tmp_path):
    loaded = load_stories(_write_store(tmp_path / "stories.jsonl"))
    frame, _ = compute_story_metrics(loaded.frame, [], quiet_config(enabled=["perplexity", "sampler_diagnostics"]))
    assert frame.loc[0, "mean_candidates_kept"] == pytest.approx(5.0)
    assert math.isnan(frame.loc[1, "mean_candidates_kept"])
