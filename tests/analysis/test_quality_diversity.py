"""Sampler families, the bootstrap of a setting's diversity and quality, the closest-setting table, and
the report's quality-diversity section on a synthetic comparison of samplers."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from analysis.quality_diversity import (QualityDiversityError, bootstrap_setting, closest_settings, family_of,
                                        percentile_interval, quality_diversity_points, sampling_of,
                                        setting_draws, setting_families)
from analysis.report import report_for_run
from analysis.run_data import load_run
from analysis.synthetic import synthetic_ratings
from experiments.config import SamplingConfig
from experiments.generate import grid_overrides, to_typed, validate_composed
from experiments.identity import setting_of
from experiments.samplers import SAMPLER_NAMES

REPO = Path(__file__).resolve().parents[2]
TEMPERATURE_FIRST = ["temperature", *[name for name in SAMPLER_NAMES if name != "temperature"]]


# ---------------------------------------------------------------- families


@pytest.mark.parametrize("sampling,family", [
    (SamplingConfig(temperature=0.5), "temperature"),
    (SamplingConfig(temperature=1.0), "temperature"),  # temperature 1 runs no sampler at all
    (SamplingConfig(temperature=1.0, sampler_order=TEMPERATURE_FIRST), "temperature"),
    (SamplingConfig(temperature=2.0, min_p=0.1), "min_p"),
    (SamplingConfig(temperature=1.0, min_p=0.1, sampler_order=TEMPERATURE_FIRST), "min_p, temperature first"),
    (SamplingConfig(temperature=2.0, min_p=0.1, sampler_order=["temperature", "min_p"]), "min_p, temperature first"),
    (SamplingConfig(temperature=2.0, min_p=0.1, top_k=40, sampler_order=["min_p", "temperature", "top_k"]),
     "top_k, min_p, order min_p > temperature > top_k"),
    (SamplingConfig(xtc_probability=0.5, xtc_threshold=0.1), "xtc"),
    (SamplingConfig(xtc_probability=0.0), "temperature"),  # XTC off
    (SamplingConfig(top_n_sigma=1.0, temperature=3.0), "top_n_sigma"),
    (SamplingConfig(top_k=50, top_p=0.9), "top_k, top_p"),
    (SamplingConfig(dynatemp_range=0.5), "dynatemp"),
    (SamplingConfig(mirostat_mode=2), "mirostat"),
])
def test_the_family_is_the_samplers_beyond_temperature_and_a_changed_order(sampling, family):
    assert family_of(sampling) == family


def test_a_setting_is_rebuilt_from_a_row_of_the_runs_table():
    row = {"temperature": np.float64(1.5), "top_k": np.float64(0.0), "top_p": 1.0, "min_p": math.nan,
           "base_seed": np.int64(3), "sampler_order": '["temperature", "min_p"]', "stop": "[]", "max_tokens": 16,
           "setting.setting_id": "a story field's name", "xtc_probability": None}
    sampling = sampling_of(row)
    assert (sampling.temperature, sampling.top_k, sampling.min_p, sampling.seed) == (1.5, 0, None, 3)
    assert type(sampling.top_k) is int and sampling.sampler_order == ["temperature", "min_p"]
    assert sampling.stop == [] and sampling.max_tokens == 16
    stored = setting_of(SamplingConfig(temperature=2.0, min_p=0.1, sampler_order=TEMPERATURE_FIRST))
    assert family_of(sampling_of(stored)) == "min_p, temperature first"


def test_a_setting_that_is_not_a_valid_sampling_setting_is_named():
    with pytest.raises(QualityDiversityError, match=r"not a valid sampling setting: sampling.top_p=1.5"):
        sampling_of({"temperature": 1.0, "top_p": 1.5})


def test_every_job_of_the_samplers_experiment_validates_and_has_its_family():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        top = compose("config", overrides=["experiment=samplers"], return_hydra_config=True)
        grid = grid_overrides(dict(top.hydra.sweeper.params), ["experiment=samplers"])
        jobs = [compose("config", overrides=["experiment=samplers", *combination]) for combination in grid]
    families: dict[str, set[float]] = {}
    for job in jobs:
        validate_composed(job)
        typed = to_typed(job)
        assert typed.sampler_diagnostics and typed.prompt.id == "paper"
        assert (typed.sampling.top_k, typed.sampling.top_p) == (0, 1.0)
        families.setdefault(family_of(sampling_of(setting_of(typed.sampling))), set()).add(typed.sampling.temperature)
    assert set(families) == {"temperature", "min_p", "min_p, temperature first", "xtc", "top_n_sigma"}
    assert len({frozenset(temperatures) for temperatures in families.values()}) == 1  # one grid for all
    assert max(families["min_p"]) >= 3.0


# ---------------------------------------------------------------- one setting, by hand

# Stories 0 and 2 share a direction, story 1 is orthogonal to both; quality 1, 2, 3.
VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
QUALITY = np.array([1.0, 2.0, 3.0])
DRAWS = np.array([[0, 1, 2], [0, 0, 1], [2, 2, 2]])


def test_the_bootstrap_of_one_setting_by_hand():
    vendi_of_two_to_one = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))  # eigenvalues 2/3, 1/3
    estimates = bootstrap_setting(VECTORS, {"q": QUALITY}, DRAWS, confidence=0.5)  # 25th and 75th percentiles
    vendi, distance, quality = estimates["vendi_score"], estimates["mean_pairwise_cos_dist"], estimates["q"]
    assert vendi.value == pytest.approx(vendi_of_two_to_one) and vendi.n == 3
    # pairs (0,1), (0,2), (1,2): distances 1, 0, 1
    assert distance.value == pytest.approx(2 / 3)
    assert quality.value == pytest.approx(2.0)
    # Resamples: [0,1,2] as the estimate; [0,0,1]: Vendi as two-to-one, the two draws of story 0 are
    # not a pair, so the pairs are (0,1) twice: distance 1, quality 4/3; [2,2,2]: Vendi 1, no pair, quality 3.
    # Vendi replicates shifted by (their mean - the estimate), then numpy's linear percentiles.
    replicates = np.array([vendi_of_two_to_one, vendi_of_two_to_one, 1.0])
    shifted = np.sort(replicates - (replicates.mean() - vendi_of_two_to_one))
    assert (vendi.ci_low, vendi.ci_high) == pytest.approx(
        (shifted[0] + 0.5 * (shifted[1] - shifted[0]), shifted[1]))
    assert (distance.ci_low, distance.ci_high) == pytest.approx((2 / 3 + 0.25 / 3, 2 / 3 + 0.75 / 3))
    assert (quality.ci_low, quality.ci_high) == pytest.approx((4 / 3 + 0.5 * (2 - 4 / 3), 2.5))


def test_a_story_without_an_embedding_counts_for_quality_only():
    vectors = np.vstack([VECTORS, np.full(2, np.nan)])
    estimates = bootstrap_setting(vectors, {"q": np.append(QUALITY, 10.0)}, np.array([[0, 1, 2, 3]]), 0.95)
    assert estimates["vendi_score"].n == 3 and estimates["q"].n == 4
    assert estimates["mean_pairwise_cos_dist"].value == pytest.approx(2 / 3)
    assert estimates["q"].value == pytest.approx(4.0)
    unrated = bootstrap_setting(VECTORS, {"q": np.array([np.nan, 2.0, np.nan])}, np.array([[0, 0, 2]]), 0.95)
    assert unrated["q"].value == 2.0 and math.isnan(unrated["q"].ci_low)  # no rated story was drawn


def test_percentile_interval_and_draws():
    assert percentile_interval(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), 0.5) == (1.75, 3.25)
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan]), 0.95))
    draws = setting_draws("s-1", 5, resamples=4, seed=0)
    assert draws.shape == (4, 5) and draws.min() >= 0 and draws.max() < 5
    assert np.array_equal(draws, setting_draws("s-1", 5, 4, 0))
    assert not np.array_equal(draws, setting_draws("s-2", 5, 4, 0))
    assert not np.array_equal(draws, setting_draws("s-1", 5, 4, 1))


def test_the_bootstrap_intervals_hold_the_estimates_on_many_stories():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(40, 8)) + 2.0
    quality = rng.normal(3.0, 1.0, size=40)
    estimates = bootstrap_setting(vectors, {"q": quality}, setting_draws("s", 40, 300, 0), 0.95)
    for estimate in estimates.values():
        assert estimate.ci_low < estimate.value < estimate.ci_high


# ---------------------------------------------------------------- the table, by hand


def _points(rows):
    return pd.DataFrame([{"setting_id": f"{family}-{t}", "family": family, "temperature": t, "measure": measure,
                          "kind": kind, "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": 10}
                         for family, t, vendi, ppl in rows
                         for measure, kind, value in (("vendi_score", "diversity", vendi),
                                                      ("perplexity", "quality", ppl))])


def test_the_closest_setting_of_each_family_to_each_temperature_level():
    points = _points([("temperature", 0.5, 2.0, 3.0), ("temperature", 1.5, 6.0, 9.0),
                      ("min_p", 1.0, 1.5, 2.0), ("min_p", 2.0, 5.0, 4.0), ("min_p", 3.0, 7.0, 5.0),
                      ("xtc", 1.0, 4.0, 6.0), ("xtc", 2.0, 8.0, 20.0)])
    table = closest_settings(points, "vendi_score", "perplexity")
    picked = table[["reference_temperature", "family", "temperature"]].values.tolist()
    # level 2.0: min_p 1.5 (gap 0.5) beats 5.0; xtc 4.0 beats 8.0. Level 6.0: min_p 5.0 and 7.0 tie (the
    # lower temperature wins); xtc 4.0 and 8.0 tie too.
    assert picked == [[0.5, "min_p", 1.0], [0.5, "xtc", 1.0], [1.5, "min_p", 2.0], [1.5, "xtc", 1.0]]
    first = table.iloc[2]
    assert (first["diversity"], first["quality"], first["quality_ci_low"]) == pytest.approx((5.0, 4.0, 3.9))
    assert (first["reference_diversity"], first["reference_quality"]) == (6.0, 9.0)
    assert (first["reference_quality_ci_low"], first["reference_quality_ci_high"]) == pytest.approx((8.9, 9.1))
    assert set(table["diversity_measure"]) == {"vendi_score"} and set(table["quality_measure"]) == {"perplexity"}


def test_no_reference_family_gives_an_empty_table():
    assert closest_settings(_points([("min_p", 1.0, 1.5, 2.0)]), "vendi_score", "perplexity").empty


# ---------------------------------------------------------------- a synthetic comparison of samplers

FAMILY_SETTINGS = {
    "temperature": {},
    "min_p": {"min_p": 0.1},
    "min_p, temperature first": {"min_p": 0.1, "sampler_order": TEMPERATURE_FIRST},
    "xtc": {"xtc_probability": 0.5, "xtc_threshold": 0.1},
}


def build_samplers_run(run_dir: Path, temperatures=(0.5, 1.0, 2.0), stories_per_setting: int = 8,
                       embeddings: bool = True, seed: int = 0) -> Path:
    """stories.jsonl, metrics.parquet, embeddings.parquet and ratings.csv of a small comparison of samplers:
    spread of the embeddings and perplexity grow with temperature, less so under min-p."""
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    stories, metric_rows, vectors = [], [], []
    centre = rng.normal(size=16)
    for family, extra in FAMILY_SETTINGS.items():
        damping = 0.5 if family.startswith("min_p") else 1.0
        for temperature in temperatures:
            setting = setting_of(SamplingConfig(temperature=temperature, max_tokens=64, **extra))
            setting_id = "s-" + hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]
            for index in range(stories_per_setting):
                story_id = f"{setting_id}-{index}"
                stories.append({"story_id": story_id, "setting_id": setting_id, "setting": setting,
                                "seed": index, "sample_index": index, "text": "A story.", "temperature": temperature})
                vectors.append(centre + damping * temperature * rng.normal(size=16))
                metric_rows.append({"story_id": story_id,
                                    "perplexity": float(np.exp(1 + damping * temperature + rng.normal(0, 0.1))),
                                    "mean_entropy_before": float(rng.uniform(1, 3)),
                                    "mean_candidates_kept": float(rng.uniform(1, 100))})
    with open(run_dir / "stories.jsonl", "w", encoding="utf-8") as handle:
        for story in stories:
            handle.write(json.dumps({k: v for k, v in story.items() if k != "temperature"}) + "\n")
    pd.DataFrame(metric_rows).to_parquet(run_dir / "metrics.parquet", index=False)
    if embeddings:
        pd.DataFrame({"story_id": [s["story_id"] for s in stories],
                      "embedding": [np.asarray(v / np.linalg.norm(v), dtype=np.float32) for v in vectors]}
                     ).to_parquet(run_dir / "embeddings.parquet", index=False)
    synthetic_ratings(pd.DataFrame(stories), 6, 2, rng).to_csv(run_dir / "ratings.csv", index=False)
    return run_dir


def test_points_of_a_run_have_every_setting_and_measure(tmp_path):
    from analysis.quality_diversity import load_embeddings, quality_measures

    run = load_run(build_samplers_run(tmp_path / "run"))
    families = setting_families(run)
    assert sorted(set(families["family"])) == sorted(FAMILY_SETTINGS)
    points = quality_diversity_points(run.stories, load_embeddings(run.run_dir), quality_measures(run, None, []),
                                      families, resamples=50, seed=0)
    assert len(points) == 12 * 3 and set(points["measure"]) == {"vendi_score", "mean_pairwise_cos_dist", "perplexity"}
    assert np.isfinite(points[["value", "ci_low", "ci_high"]].to_numpy()).all()
    assert (points["n"] == 8).all()
    again = quality_diversity_points(run.stories, load_embeddings(run.run_dir), quality_measures(run, None, []),
                                     families, resamples=50, seed=0)
    pd.testing.assert_frame_equal(points, again)


def test_the_report_draws_the_quality_diversity_figure_and_tables(tmp_path):
    run_dir = build_samplers_run(tmp_path / "run")
    path = report_for_run(run_dir, ratings=run_dir / "ratings.csv", progress=False, bootstrap_resamples=50)
    out = path.parent
    for extension in ("png", "pdf"):
        assert (out / "figures" / f"quality_diversity.{extension}").stat().st_size > 1000
    points = pd.read_csv(out / "tables" / "quality_diversity.csv")
    assert set(points["measure"]) == {"vendi_score", "mean_pairwise_cos_dist", "perplexity", "novelty",
                                      "typicality", "cohesion", "coherence"}
    for measure in ("perplexity", "novelty", "coherence"):
        table = pd.read_csv(out / "tables" / f"quality_diversity_closest_{measure}.csv")
        assert len(table) == 3 * 3  # 3 temperature levels x 3 other families
    text = path.read_text()
    assert "## Quality and diversity per sampler family" in text and "(figures/quality_diversity.png)" in text
    assert "more diversity at the same quality" in text
    # settings are labelled and ordered by family (temperature alone first)
    settings = pd.read_csv(out / "tables" / "settings.csv")
    assert settings["setting"].iloc[0] == "temperature: temperature=0.5"
    assert "min_p, temperature first: temperature=2" in settings["setting"].tolist()


def test_a_run_without_embeddings_says_what_to_run(tmp_path):
    path = report_for_run(build_samplers_run(tmp_path / "run", embeddings=False), progress=False)
    text = path.read_text()
    assert "no embeddings.parquet" in text and not (path.parent / "figures" / "quality_diversity.png").exists()


def test_a_run_of_one_family_has_no_quality_diversity_section(temperature_run):
    assert "Quality and diversity" not in report_for_run(temperature_run["run_dir"], progress=False).read_text()
