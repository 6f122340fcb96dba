"""The report on synthetic runs with the exact contract, its config schema, and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.config import Correction, ReportConfig
from analysis.mixed_models import MIXED_MODEL_COLUMNS
from analysis.ratings import RatingsError
from analysis.report import build_report, report_for_run
from analysis.run_data import RunError, load_run

REPO = Path(__file__).resolve().parents[2]


def _config(run: dict, **overrides) -> ReportConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("report", overrides=[f"run_dir={run['run_dir']}", "progress=false",
                                           *[f"{k}={v}" for k, v in overrides.items()]])
    return OmegaConf.to_object(cfg)


def test_config_composes_and_resolves_out_dir(synthetic_run):
    config = _config(synthetic_run, correction="holm")
    assert isinstance(config, ReportConfig)
    assert config.correction is Correction.holm
    assert config.out_dir == f"{synthetic_run['run_dir']}/report"


@pytest.mark.parametrize("override", ["corection=holm", "correction=sidak", "confidence=high",
                                      "crossed_random_effects=maybe"])
def test_config_typos_and_wrong_types_fail_at_composition(synthetic_run, override):
    key, value = override.split("=")
    with pytest.raises(Exception, match=key if key != "correction" else "correction"):
        _config(synthetic_run, **{key: value})


def test_config_range_is_checked_when_built(synthetic_run):
    with pytest.raises(ValueError, match=r"confidence=1\.5 is not allowed"):
        _config(synthetic_run, confidence=1.5)


def test_run_loader_finds_swept_parameters_and_metrics(synthetic_run):
    run = load_run(synthetic_run["run_dir"])
    assert run.swept == ["temperature", "top_p"]  # seed, top_k, max_tokens are constant or excluded
    assert run.metrics == ["perplexity", "perplexity_scorer", "prototype_cos_sim", "prototype_edit_dist_norm"]
    assert len(run.settings_order) == 6 and run.exemplar_points == [(0.0, 0.0)]
    assert run.setting_labels[run.settings_order[0]] == "temperature=0.2, top_p=0.5"


def test_full_report_with_ratings(synthetic_run):
    path = build_report(_config(synthetic_run, ratings=synthetic_run["ratings"]))
    out = path.parent
    assert path == synthetic_run["run_dir"] / "report" / "report.md"
    for name in ("settings", "setting_summary", "correlations_parameters", "diversity", "ratings_descriptives",
                 "mixed_models", "correlations_ratings"):
        for extension in ("csv", "tex", "md"):
            assert (out / "tables" / f"{name}.{extension}").stat().st_size > 0, (name, extension)
    for name in ("box_perplexity", "box_prototype_cos_sim", "box_prototype_edit_dist_norm", "pca_scatter",
                 "rating_histograms", "heatmap_perplexity", "heatmap_prototype_cos_sim"):
        for extension in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{extension}").stat().st_size > 1000, (name, extension)
    text = path.read_text()
    assert "![" in text and "(figures/pca_scatter.png)" in text and "  temperature: " in text
    models = pd.read_csv(out / "tables" / "mixed_models.csv")
    assert list(models.columns) == MIXED_MODEL_COLUMNS + ["p_adjusted", "correction"]
    assert len(models) == 4 * 6  # 4 criteria x (2 swept parameters + 4 metrics)
    novelty = models.query("criterion == 'novelty' and predictor == 'temperature'").iloc[0]
    assert novelty["ci_low"] < 0.4 < novelty["ci_high"]  # the synthetic true slope (analysis.synthetic)
    correlations = pd.read_csv(out / "tables" / "correlations_parameters.csv")
    assert set(correlations["x"]) == {"temperature", "top_p"} and len(correlations) == 2 * 4 * 2


def test_metrics_only_report_of_a_one_parameter_sweep(temperature_run):
    path = report_for_run(temperature_run["run_dir"], progress=False)
    figures = {p.name for p in (path.parent / "figures").iterdir()}
    assert "box_perplexity.png" in figures and not any(name.startswith("heatmap") for name in figures)
    assert "no human ratings" in path.read_text()


def test_ratings_for_another_run_are_refused_before_any_output(synthetic_run, tmp_path):
    ratings = pd.read_csv(synthetic_run["ratings"])
    ratings.loc[3, "story_id"] = "not-a-story"
    ratings.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(RatingsError, match=r"other\.csv: story id\(s\) 'not-a-story' \(row\(s\) 4\)"):
        build_report(_config(synthetic_run, ratings=tmp_path / "other.csv"))
    assert not (synthetic_run["run_dir"] / "report").exists()


def test_a_constant_metric_is_refused_with_the_option_to_drop_it(synthetic_run):
    metrics = pd.read_parquet(synthetic_run["metrics"]).assign(flat=1.0)
    metrics.to_parquet(synthetic_run["metrics"])
    with pytest.raises(RunError, match=r"predictor 'flat' has no variance .* exclude_metrics"):
        build_report(_config(synthetic_run))
    assert build_report(_config(synthetic_run, exclude_metrics="[pca_x,pca_y,flat]")).exists()


def test_untrusted_setting_text_is_escaped_in_the_report(temperature_run):
    path = temperature_run["stories"]
    stories = [json.loads(line) for line in path.read_text().splitlines()]
    for story in stories:
        story["setting_id"] = "<img src=x onerror=alert(1)>|" + story["setting_id"]
    path.write_text("".join(json.dumps(s) + "\n" for s in stories))
    text = build_report(_config(temperature_run)).read_text()
    assert "<img" not in text and "&lt;img" in text


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="no stories.jsonl"):
        load_run(tmp_path)


def test_command_line_prints_the_report_path_and_leaves_no_litter(temperature_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "analysis.report", f"run_dir={temperature_run['run_dir']}", "progress=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = temperature_run["run_dir"] / "report" / "report.md"
    assert result.stdout.strip().splitlines()[-1] == str(report)
    assert [p.name for p in tmp_path.iterdir()] == ["run1"]  # nothing written in the working directory
    assert (report.parent / ".hydra" / "config.yaml").exists()
