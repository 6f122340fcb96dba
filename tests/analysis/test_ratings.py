"""Each bad ratings input gets a clear error naming file, row and column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.ratings import RatingsError, load_ratings, read_ratings_file

GOOD = pd.DataFrame({
    "story_id": ["a", "b", "a", "b"], "participant_id": ["p1", "p1", "p2", "p2"],
    "novelty": [1.0, 2.5, 5.0, 3.0], "typicality": [2.0, 2.0, 2.0, 2.1],
    "cohesion": [3.0, 3.0, 4.0, 1.0], "coherence": [4.0, 1.0, 2.0, 2.0],
})


def _write(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    return path


def test_good_ratings_load_with_string_ids(tmp_path):
    frame = GOOD.assign(participant_id=[1, 1, 2, 2], story_id=["-nc7", "0001", "-nc7", "0001"])
    ratings = load_ratings(_write(tmp_path, frame), known_story_ids={"-nc7", "0001"})
    assert ratings["participant_id"].tolist() == ["1", "1", "2", "2"]
    assert ratings["story_id"].tolist() == ["-nc7", "0001", "-nc7", "0001"]  # leading zeros kept


def test_a_saved_pandas_index_is_dropped(tmp_path):
    path = tmp_path / "indexed.csv"
    GOOD.to_csv(path)
    assert list(read_ratings_file(path).columns) == list(GOOD.columns)


def test_missing_columns(tmp_path):
    path = _write(tmp_path, GOOD.drop(columns=["cohesion", "participant_id"]))
    with pytest.raises(RatingsError, match=r"ratings\.csv: missing column\(s\) 'participant_id', 'cohesion'"):
        load_ratings(path)


def test_rating_outside_the_declared_scale(tmp_path):
    path = _write(tmp_path, GOOD.assign(novelty=[1.0, 2.0, 6.0, 0.5]))
    with pytest.raises(RatingsError, match=r"ratings\.csv: column 'novelty' has value\(s\) 6\.0, 0\.5 outside the "
                                           r"declared scale \[1, 5\] in row\(s\) 3, 4"):
        load_ratings(path)
    assert load_ratings(path, scale=(0, 7))["novelty"].max() == 6.0


def test_non_numeric_rating(tmp_path):
    path = _write(tmp_path, GOOD.assign(coherence=["4", "good", "2", "2"]))
    with pytest.raises(RatingsError, match=r"column 'coherence' has non-numeric value 'good' in row\(s\) 2"):
        load_ratings(path)


def test_story_ids_absent_from_the_run(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(RatingsError, match=r"story id\(s\) 'b' \(row\(s\) 2, 4\) are not in the run"):
        load_ratings(path, known_story_ids={"a", "c"})


def test_duplicated_participant_story_rows(tmp_path):
    path = _write(tmp_path, pd.concat([GOOD, GOOD.iloc[[1]]], ignore_index=True))
    with pytest.raises(RatingsError, match=r"participant 'p1' rated story 'b' more than once; .* row\(s\) 2, 5"):
        load_ratings(path)


def test_empty_id(tmp_path):
    path = _write(tmp_path, GOOD.assign(participant_id=["p1", None, "p2", "p2"]))
    with pytest.raises(RatingsError, match=r"column 'participant_id' is empty in row\(s\) 2"):
        load_ratings(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(RatingsError, match="no such ratings file"):
        load_ratings(tmp_path / "nope.csv")
    (tmp_path / "ratings.xlsx").write_bytes(b"")
    with pytest.raises(RatingsError, match="unknown ratings format"):
        load_ratings(tmp_path / "ratings.xlsx")


def test_the_criteria_and_their_scale_are_named_once():
    """analysis.criteria is the one list; the ratings contract, the configs and the survey use it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from analysis import ratings
    from analysis.config import ReportConfig, register_configs
    from analysis.criteria import CRITERIA, CRITERION_NAMES, SCALE, criterion
    from analysis.survey import questions
    from analysis.survey.config import ImportConfig

    assert CRITERION_NAMES == ("novelty", "typicality", "cohesion", "coherence") and SCALE == (1, 5)
    assert [c.name for c in CRITERIA if c.compares_to_exemplar] == ["novelty", "typicality"]
    assert criterion("cohesion").question.startswith("To what extent is the above story consistent")
    assert ratings.CRITERIA == CRITERION_NAMES and questions.CRITERIA is CRITERIA and questions.SCALE == SCALE
    assert (ImportConfig(input="x", out="y").scale_min, ImportConfig(input="x", out="y").scale_max) == SCALE

    conf = Path(__file__).resolve().parents[2] / "conf"
    report_yaml = (conf / "report.yaml").read_text()
    assert not {"criteria", "scale_min", "scale_max"} & set(OmegaConf.create(report_yaml))  # not repeated there
    assert not any(name in report_yaml for name in CRITERION_NAMES)
    register_configs()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        config = OmegaConf.to_object(compose("report", overrides=["run_dir=x"]))
        assert isinstance(config, ReportConfig)
        assert config.criteria == list(CRITERION_NAMES) and config.scale == SCALE
        fewer = OmegaConf.to_object(compose("report", overrides=["run_dir=x", "criteria=[novelty,coherence]"]))
        assert fewer.criteria == ["novelty", "coherence"]
