"""The paper's 33 survey stories (31 rated + 2 practice) against its exemplar."""

import json

import numpy as np
import pandas as pd
import pytest

from metrics.compute import compute_metrics, compute_story_metrics
from metrics.config import ComputeMetricsConfig
from metrics.inputs import load_stories
from tests.metrics.fakes import quiet_config


def test_survey_folder_reads_as_the_paper_describes(paper_dir):
    loaded = load_stories(paper_dir / "survey_stories")
    frame = loaded.frame.set_index("story_id")
    assert len(frame) == 33
    assert sorted(loaded.source["practice_story_ids"]) == ["eqcV", "w5ak"]
    assert "-nc7" in frame.index  # the id that the raw export guarded as '-nc7
    assert frame.loc["A7JT", "temperature"] == 0.001
    assert sorted(frame["temperature"].unique()) == [0.001, 0.334, 0.667, 1.0, 1.334, 1.667, 2.0]
    ratings = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0)
    rated = set(ratings["story_id"])
    assert rated == set(frame.index[~frame["practice"].astype(bool)])


def test_edit_distance_to_the_exemplar_without_models(paper_dir, tmp_path):
    config = ComputeMetricsConfig(stories=str(paper_dir / "survey_stories"), out_dir=str(tmp_path),
                                  exemplar=str(paper_dir / "exemplar.txt"), include_practice=False,
                                  metrics=quiet_config(enabled=["edit_dist"]))
    paths = compute_metrics(config)
    frame = pd.read_parquet(paths["metrics"]).set_index("story_id")
    assert len(frame) == 31
    distances = frame["prototype_edit_dist_norm"]
    assert distances.between(0, 1).all()
    # the survey's temperature-0.001 story is the exemplar's own story (a longer transcript of it)
    assert distances.idxmin() == "A7JT" and distances["A7JT"] < 0.4
    assert (distances.drop("A7JT") > 0.6).all()


@pytest.mark.slow
def test_survey_stories_against_the_exemplar(paper_dir):
    """What the analysis stage does to re-measure the paper's 31 rated stories."""
    stories = load_stories(paper_dir / "survey_stories", include_practice=False).frame
    exemplar = (paper_dir / "exemplar.txt").read_text(encoding="utf-8")
    frame, sidecar = compute_story_metrics(stories[["story_id", "text"]], [exemplar],
                                           quiet_config(enabled=["cos_sim", "edit_dist", "pca"]))
    frame = frame.set_index("story_id")
    assert len(frame) == 31
    assert np.isfinite(frame.to_numpy()).all()
    assert frame["prototype_cos_sim"].idxmax() == "A7JT" and frame.loc["A7JT", "prototype_cos_sim"] > 0.9
    assert frame["prototype_cos_sim"].between(0, 1).all()
    # the least similar stories by embedding are also far by words
    assert frame["prototype_cos_sim"].corr(frame["prototype_edit_dist_norm"], method="spearman") < -0.3
    assert sidecar["embedding"]["pooling"] == "chunk_mean"
    assert sidecar["embedding"]["stories_over_window"] > 20  # the stories are longer than 256 word pieces
    ratio = sidecar["pca"]["explained_variance_ratio"]
    assert 0 < ratio[1] <= ratio[0] < 1
    json.dumps(sidecar, allow_nan=False)
