"""The reproduction of the published study on its released data (../shared/paper)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis import paper_published
from analysis.mixed_models import mixed_models_table
from analysis.reproduce_paper import (COMPARED_EDIT_UNITS, DESCRIPTIVES_COLUMNS, EDIT_PREDICTOR, LME_COLUMNS,
                                      PaperDataError, beta_gaps, edit_distance_by_unit, edit_distance_comparison,
                                      edit_distance_note, exemplar_text, reproduce, survey_stories)
from metrics.config import MetricsConfig

REPO = Path(__file__).resolve().parents[2]
pingouin = pytest.importorskip("pingouin")
needs_metrics_stage = pytest.mark.skipif(importlib.util.find_spec("metrics.compute") is None,
                                         reason="metrics.compute (the metrics stage) is not in this checkout")


def _config(paper_dir: Path, out_dir: Path, *overrides: str):
    import analysis.reproduce_paper  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("reproduce_paper", overrides=[f"paper_dir={paper_dir}", f"out_dir={out_dir}",
                                                    "progress=false", *overrides])
    return OmegaConf.to_object(cfg)


@pytest.fixture(scope="module")
def temperature_only(paper_dir, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("reproduction")
    reproduce(_config(paper_dir, out_dir, "remeasure=false"))
    return out_dir


def test_survey_stories_are_the_31_rated_ones(paper_dir):
    stories = survey_stories(paper_dir)
    assert len(stories) == 31 and "-nc7" in set(stories["story_id"])
    assert not stories["text"].str.contains("<br>").any()
    assert stories.groupby("temperature").size().to_dict()[2.0] == 5


def test_descriptives_match_pandas_and_pingouin(paper_dir, temperature_only):
    table = pd.read_csv(temperature_only / "descriptives.csv")
    assert list(table.columns) == DESCRIPTIVES_COLUMNS
    assert list(table["criterion"]) == ["novelty", "typicality", "cohesion", "coherence"]
    ratings = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0)
    for row in table.itertuples():
        assert row.mean == pytest.approx(ratings[row.criterion].mean())
        assert row.sd == pytest.approx(ratings[row.criterion].std())
        expected, _ = pingouin.cronbach_alpha(ratings, items="story_id", scores=row.criterion,
                                              subject="participant_id")
        assert row.cronbach_alpha == pytest.approx(expected)


def test_temperature_models_on_the_paper_data(temperature_only):
    table = pd.read_csv(temperature_only / "lme.csv")
    assert list(table.columns) == LME_COLUMNS
    assert set(table["predictor"]) == {"temperature"}
    novelty = table.set_index("criterion").loc["novelty"]
    # Values of this fit (statsmodels MixedLM, REML): a weak positive effect of temperature on novelty.
    assert novelty["beta"] == pytest.approx(0.3078, abs=5e-4)
    assert novelty["se"] == pytest.approx(0.1376, abs=5e-4)
    assert novelty["p"] == pytest.approx(0.0253, abs=5e-4)
    assert novelty["r2_marginal"] == pytest.approx(0.0244, abs=5e-4)
    assert (table["r2_conditional_paper"] > table["r2_conditional"]).all()
    for name in ("descriptives", "lme"):
        assert "\\toprule" in (temperature_only / f"{name}.tex").read_text()
    for name in ("rating_histograms", "box_novelty"):
        assert (temperature_only / "figures" / f"{name}.pdf").exists()
    assert "![" in (temperature_only / "reproduction.md").read_text()


def test_paper_style_columns_reproduce_the_published_temperature_models(temperature_only):
    table = pd.read_csv(temperature_only / "lme.csv").set_index("criterion")
    assert set(paper_published.TEMPERATURE_MODELS) == set(table.index)
    for criterion, published in paper_published.TEMPERATURE_MODELS.items():
        ours = table.loc[criterion]
        assert ours["beta"] == pytest.approx(published.beta, abs=1e-3), criterion
        assert ours["se"] == pytest.approx(published.se, abs=1e-3), criterion
        assert ours["r2_conditional_paper"] == pytest.approx(published.r2_conditional, abs=1e-3), criterion
        assert ours["r2_marginal_paper"] == pytest.approx(published.r2_marginal, abs=1e-3), criterion
        # Nakagawa's marginal R^2 (fixed part only) is far below the paper's.
        assert ours["r2_marginal"] < published.r2_marginal / 2, criterion


def test_reproduction_shows_published_paper_style_and_nakagawa_side_by_side(temperature_only):
    comparison = pd.read_csv(temperature_only / "comparison_temperature.csv").set_index("criterion")
    lme = pd.read_csv(temperature_only / "lme.csv").set_index("criterion")
    for criterion, published in paper_published.TEMPERATURE_MODELS.items():
        row = comparison.loc[criterion]
        assert (row["r2c_published"], row["r2m_published"]) == (published.r2_conditional, published.r2_marginal)
        assert row["r2c_paper_style"] == pytest.approx(lme.loc[criterion, "r2_conditional_paper"])
        assert row["r2m_nakagawa"] == pytest.approx(lme.loc[criterion, "r2_marginal"])
    text = (temperature_only / "reproduction.md").read_text()
    assert "## Comparison with the publication" in text and "reproduce the published beta, SE and R^2" in text
    assert "not re-measured (remeasure=false)" in text


@needs_metrics_stage
def test_edit_distance_is_compared_with_the_publication_in_both_units(paper_dir):
    stories = survey_stories(paper_dir)
    by_unit = edit_distance_by_unit(stories, exemplar_text(paper_dir), MetricsConfig())
    columns = [f"{EDIT_PREDICTOR}_{unit.value}" for unit in COMPARED_EDIT_UNITS]
    assert by_unit[columns].notna().all().all() and by_unit[columns].ge(0).all().all()
    ratings = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0)
    data = ratings.merge(by_unit.drop(columns="temperature"), on="story_id")
    comparison = edit_distance_comparison(mixed_models_table(data, list(paper_published.EDIT_DISTANCE_MODELS),
                                                             columns)).set_index("criterion")
    assert comparison.loc["novelty", "beta_published"] == paper_published.EDIT_DISTANCE_MODELS["novelty"].beta
    # Re-measured on the survey texts, the effect on novelty has the published sign and size order.
    assert 1.5 < comparison.loc["novelty", "beta_word"] < 3.0
    gaps = beta_gaps(comparison.reset_index())
    assert gaps["word"] < gaps["char"]  # words are the closer unit (measured: 0.086 vs 0.217)
    assert "Closest to the published betas: word units" in edit_distance_note(by_unit, comparison.reset_index())


def test_a_paper_folder_without_stories_is_a_clear_error(tmp_path):
    with pytest.raises(PaperDataError, match="metadata.csv: not found"):
        survey_stories(tmp_path)


@pytest.mark.slow
@needs_metrics_stage
def test_reproduction_with_remeasured_metrics(paper_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the embedding model comes from a PyPI package, never a hub
    reproduce(_config(paper_dir, tmp_path))
    table = pd.read_csv(tmp_path / "lme.csv")
    assert set(table["predictor"]) == {"temperature", "prototype_edit_dist_norm", "prototype_cos_sim"}
    assert len(table) == 12 and table["beta"].notna().all()
    edit = pd.read_csv(tmp_path / "comparison_edit_distance.csv")
    assert list(edit["criterion"]) == list(paper_published.EDIT_DISTANCE_MODELS)
    assert {"beta_published", "se_published", "beta_word", "se_word", "beta_char", "se_char"} <= set(edit.columns)
    assert "Why they differ" in (tmp_path / "reproduction.md").read_text()
    metrics = pd.read_csv(tmp_path / "story_metrics.csv")
    # The near-greedy story (T = 0.001) is the closest to the exemplar.
    closest = metrics.loc[metrics["prototype_edit_dist_norm"].idxmin(), "temperature"]
    assert closest == pytest.approx(0.001)
