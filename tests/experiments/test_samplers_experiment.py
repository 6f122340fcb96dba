"""``experiment=samplers`` for real at tiny size: generate on the embedded model, the fast metrics, the
report with its quality-diversity figure and table."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.quality_diversity import family_of, sampling_of
from experiments.store import read_stories

from .conftest import REPO, run_generate

pytestmark = pytest.mark.slow

FAMILIES = {"temperature", "min_p", "min_p, temperature first", "xtc", "top_n_sigma"}
DIAGNOSTICS = ["mean_entropy_before", "mean_entropy_after", "mean_entropy_cut", "mean_candidates_kept"]


def _run(module: str, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{module} {' '.join(args)}:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_samplers_experiment_generate_metrics_report(tmp_path, backend):
    out = tmp_path / "samplers"
    # A temperature on the command line wins over the grid's: two runs, two temperatures, every family.
    for temperature in (1.0, 2.0):
        run_generate("experiment=samplers", f"backend={backend}", "sampling.n=2", "sampling.max_tokens=16",
                     f"sampling.temperature={temperature}", f"out_dir={out}")
    stories = read_stories(out / "stories.jsonl")
    assert len(stories) == len(FAMILIES) * 2 * 2
    assert {family_of(sampling_of(story["setting"])) for story in stories} == FAMILIES
    for story in stories:
        diagnostics = story["sampler_diagnostics"]
        assert len(diagnostics["entropy_before"]) == len(diagnostics["candidates_kept"]) == story["n_tokens"]

    _run("metrics.compute", f"stories={out / 'stories.jsonl'}", f"out_dir={out}", "metrics=fast",
         "metrics.progress=false")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert np.isfinite(metrics[DIAGNOSTICS].to_numpy()).all()
    kept = metrics.merge(pd.DataFrame([{"story_id": s["story_id"], "min_p": s["setting"].get("min_p")}
                                       for s in stories]), on="story_id")
    # min-p 0.1 keeps a handful of tokens; temperature alone keeps the whole vocabulary
    assert kept.loc[kept["min_p"].notna(), "mean_candidates_kept"].max() < kept["mean_candidates_kept"].max()
    assert (out / "embeddings.parquet").exists()

    _run("analysis.report", f"run_dir={out}", "progress=false", "bootstrap_resamples=200")
    report = out / "report"
    for extension in ("png", "pdf"):
        assert (report / "figures" / f"quality_diversity.{extension}").stat().st_size > 1000
    points = pd.read_csv(report / "tables" / "quality_diversity.csv")
    assert set(points["family"]) == FAMILIES and set(points["measure"]) == {
        "vendi_score", "mean_pairwise_cos_dist", "perplexity"}
    closest = pd.read_csv(report / "tables" / "quality_diversity_closest_perplexity.csv")
    assert len(closest) == 2 * (len(FAMILIES) - 1)  # 2 temperature levels x 4 other families
    text = (report / "report.md").read_text()
    assert "## Quality and diversity per sampler family" in text
    assert json.loads((out / "metrics.json").read_text())["files"]["embeddings"] == "embeddings.parquet"
