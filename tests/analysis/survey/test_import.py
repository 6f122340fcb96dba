"""Importing ratings: every format, the paper's raw export, validation and exclusions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.criteria import CRITERION_NAMES
from analysis.survey.__main__ import run as cli
from analysis.survey.config import ImportConfig, SurveyError
from analysis.survey.html import HTML_CSV_COLUMNS
from analysis.survey.ingest import import_ratings

CRITERIA = list(CRITERION_NAMES)


def key_path(result):
    return str(result.out_dir / "researcher" / "unblinding_key.csv")


def html_csv(result, packet_index: int, participant: str, seed: int = 0) -> pd.DataFrame:
    """What the HTML survey downloads for one participant (values drawn at random)."""
    rng = np.random.default_rng(seed)
    survey = result.survey
    packet = survey.packets[packet_index]
    rows = []
    shown = [("practice", s) for s in survey.practice] + [("story", s) for s in packet.stories]
    positions = {"practice": 0, "story": 0}
    for kind, story in shown:
        positions[kind] += 1
        rows.append({"survey_id": survey.survey_id, "participant_id": participant, "packet": packet.label,
                     "packet_source": "url", "packet_size": len(packet.stories), "kind": kind,
                     "position": positions[kind], "blinded_id": story.blinded_id,
                     **{c: round(float(rng.uniform(1, 5)), 3) for c in CRITERIA}, "seconds_on_page": 12.5,
                     "genai_familiarity": 3, "genai_comfort": 4, "story_writing": "=1+1 looks like a formula",
                     "story_reviewing": "", "evaluation_approach": "read twice", "prolific_study_id": "",
                     "prolific_session_id": "", "started_at": "2024-01-01T00:00:00Z",
                     "finished_at": "2024-01-01T00:10:00Z"})
    frame = pd.DataFrame(rows, columns=list(HTML_CSV_COLUMNS))
    frame["story_writing"] = "'" + frame["story_writing"]  # the page's formula guard
    return frame


def write_html_downloads(result, folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(count):
        frame = html_csv(result, i, f"pid{i}", seed=i)
        frame.to_csv(folder / f"ratings_{i}.csv", index=False)
        frames.append(frame)
    return frames


def run_import(tmp_path, input_, **overrides):
    out = tmp_path / "ratings.csv"
    return import_ratings(ImportConfig(input=str(input_), out=str(out), **overrides)), out


# ---------------------------------------------------------------------------
# Formats


def test_html_downloads_round_trip_with_the_key(small_export, tmp_path):
    frames = write_html_downloads(small_export, tmp_path / "downloads")
    result, out = run_import(tmp_path, tmp_path / "downloads", key=key_path(small_export))
    assert result.format.name == "html"
    ratings = pd.read_csv(out, dtype={"story_id": str, "participant_id": str, "blinded_id": str})
    expected = pd.concat(frames).query("kind == 'story'").reset_index(drop=True)
    assert len(ratings) == 9
    assert list(ratings.columns[:12]) == ["story_id", "participant_id", "evaluation_index", *CRITERIA,
                                          "genai_familiarity", "genai_comfort", "story_writing",
                                          "story_reviewing", "evaluation_approach"]
    assert (ratings["blinded_id"] == expected["blinded_id"]).all()
    for criterion in CRITERIA:
        assert (ratings[criterion] == expected[criterion]).all()
    design = pd.read_csv(small_export.out_dir / "researcher" / "design.csv", dtype=str)
    truth = design.set_index("blinded_id")["story_id"].to_dict()
    assert (ratings["story_id"] == ratings["blinded_id"].map(truth)).all()  # unblinded
    assert {"setting_id", "temperature", "top_k"} <= set(ratings.columns)
    assert result.ratings["story_writing"].iloc[0] == "=1+1 looks like a formula"  # guard removed in memory
    assert ratings["story_writing"].iloc[0] == "'=1+1 looks like a formula"  # and re-applied in the file


def test_the_output_in_the_input_folder_is_not_read_back(small_export, tmp_path):
    folder = tmp_path / "downloads"
    write_html_downloads(small_export, folder)
    for _ in range(2):
        result = import_ratings(ImportConfig(input=str(folder), out=str(folder / "ratings.csv"),
                                             on_invalid="drop_rows"))
        assert len(result.ratings) == 9 and result.exclusions.empty


def test_html_import_without_key_keeps_blinded_ids(small_export, tmp_path):
    write_html_downloads(small_export, tmp_path / "downloads", count=1)
    result, _ = run_import(tmp_path, tmp_path / "downloads" / "ratings_0.csv", keep_practice=True)
    assert (result.ratings["story_id"] == result.ratings["blinded_id"]).all()
    assert result.ratings["practice"].tolist() == [True, True, False, False, False]


def test_long_csv_filled_in(small_export, tmp_path):
    packets = pd.read_csv(small_export.out_dir / "participant" / "packets.csv", dtype=str, keep_default_na=False)
    for i, criterion in enumerate(CRITERIA):
        packets[criterion] = [str(1 + (row + i) % 5) for row in range(len(packets))]
    packets["genai_familiarity"] = "2"
    packets.to_csv(tmp_path / "filled.csv", index=False)
    result, _ = run_import(tmp_path, tmp_path / "filled.csv", key=key_path(small_export))
    assert result.format.name == "long"
    stories = packets.loc[packets["kind"] == "story"].reset_index(drop=True)
    assert len(result.ratings) == len(stories) == 30
    assert (result.ratings["blinded_id"] == stories["blinded_id"]).all()
    assert (result.ratings["participant_id"] == stories["participant"]).all()
    assert (result.ratings["novelty"] == stories["novelty"].astype(float)).all()
    assert (result.ratings["genai_familiarity"] == 2).all()


def test_paper_raw_export_gives_the_published_ratings(paper_dir, tmp_path):
    result, out = run_import(tmp_path, paper_dir / "survey_data_16_feb_2024.csv.tar.gz")
    assert result.format.name == "qualtrics"
    ours = pd.read_csv(out, dtype={"story_id": str, "participant_id": str})
    published = pd.read_csv(paper_dir / "survey_data_by_evaluation.csv.tar.gz", index_col=0,
                            dtype={"story_id": str, "participant_id": str})
    columns = ["story_id", "participant_id", "evaluation_index", *CRITERIA, "genai_familiarity", "genai_comfort"]
    assert len(ours) == len(published) == 180
    pd.testing.assert_frame_equal(ours[columns].reset_index(drop=True), published[columns].reset_index(drop=True))
    assert "-nc7" in set(ours["story_id"]) and not any(ours["story_id"].str.startswith("'"))


def test_qualtrics_metadata_rows_are_skipped(paper_dir, tmp_path):
    raw = pd.read_csv(paper_dir / "survey_data_16_feb_2024.csv.tar.gz", dtype=str, keep_default_na=False)
    questions = pd.DataFrame([{c: c.replace("_", " ") for c in raw.columns}])
    questions["ResponseId"], questions["StartDate"] = "Response ID", "Start Date"
    import_ids = pd.DataFrame([{c: '{"ImportId":"QID%d"}' % i for i, c in enumerate(raw.columns)}])
    pd.concat([questions, import_ids, raw.head(3)]).to_csv(tmp_path / "export.csv", index=False)
    result, _ = run_import(tmp_path, tmp_path / "export.csv")
    assert len(result.ratings) == 15
    assert result.ratings["participant_id"].unique().tolist() == raw["RandomID"].head(3).tolist()


# ---------------------------------------------------------------------------
# Validation: each problem is named, nothing is written


def import_error(tmp_path, input_, **overrides) -> str:
    out = tmp_path / "ratings.csv"
    out.write_text("earlier content\n")
    with pytest.raises(SurveyError) as caught:
        import_ratings(ImportConfig(input=str(input_), out=str(out), **overrides))
    assert out.read_text() == "earlier content\n"  # nothing half-written
    assert not list(tmp_path.glob(".ratings.csv.*"))  # no temporary left behind
    return str(caught.value)


def one_html(small_export, tmp_path, change) -> str:
    frame = html_csv(small_export, 0, "pid0")
    change(frame)
    path = tmp_path / "one.csv"
    frame.to_csv(path, index=False)
    return path


def test_rating_outside_the_scale(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("novelty", [3, 3, 3, 7.5, 3]))
    message = import_error(tmp_path, path)
    assert "one.csv row 4" in message and "novelty=7.5 is outside the scale [1, 5]" in message
    assert "'pid0'" in message


def test_rating_that_is_not_a_number(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("coherence", ["2", "2", "x", "2", "2"]))
    assert "row 3" in import_error(tmp_path, path) and "coherence='x' is not a number" in import_error(tmp_path, path)


def test_unknown_blinded_id(small_export, tmp_path):
    def change(frame):
        frame.loc[3, "blinded_id"] = "Zzzzzz"
    path = one_html(small_export, tmp_path, change)
    message = import_error(tmp_path, path, key=key_path(small_export))
    assert "row 4" in message and "'Zzzzzz' is not in the unblinding key" in message


def test_duplicate_participant_and_story(small_export, tmp_path):
    def change(frame):
        frame.loc[4, "blinded_id"] = frame.loc[3, "blinded_id"]
    path = one_html(small_export, tmp_path, change)
    message = import_error(tmp_path, path)
    assert "row 5" in message and "rated this story twice (also" in message and "row 4;" in message


def test_missing_columns(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.drop(columns=["typicality"], inplace=True))
    message = import_error(tmp_path, path, format="html")
    assert "missing column(s) typicality" in message
    pd.DataFrame({"something": [1]}).to_csv(tmp_path / "odd.csv", index=False)
    assert "cannot tell the format" in import_error(tmp_path, tmp_path / "odd.csv")


def test_incomplete_html_response(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.drop(index=[4], inplace=True))
    message = import_error(tmp_path, path)
    assert "incomplete response: 2 of 3 packet stories rated" in message


def test_missing_rating_in_the_long_csv(small_export, tmp_path):
    packets = pd.read_csv(small_export.out_dir / "participant" / "packets.csv", dtype=str, keep_default_na=False)
    for criterion in CRITERIA:
        packets[criterion] = "3"
    packets.loc[7, "cohesion"] = ""
    packets.to_csv(tmp_path / "filled.csv", index=False)
    message = import_error(tmp_path, tmp_path / "filled.csv")
    assert "row 8" in message and "cohesion is missing" in message


def test_unfinished_qualtrics_response(paper_dir, tmp_path):
    raw = pd.read_csv(paper_dir / "survey_data_16_feb_2024.csv.tar.gz", dtype=str, keep_default_na=False)
    raw.loc[1, "Finished"], raw.loc[1, "Progress"] = "False", "60"
    raw.loc[1, "4_Novelty_1"] = ""
    raw.to_csv(tmp_path / "export.csv", index=False)
    message = import_error(tmp_path, tmp_path / "export.csv")
    assert "row 2" in message and "Finished=False (Progress=60)" in message and "novelty is missing" in message


def test_survey_from_another_export(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("survey_id", "Other1"))
    assert "not this key's survey" in import_error(tmp_path, path, key=key_path(small_export))


def test_participant_question_outside_its_scale(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("genai_comfort", 9))
    assert "genai_comfort='9' is not an integer in [1, 5]" in import_error(tmp_path, path)


def test_unknown_kind(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("kind", "bonus"))
    assert "kind='bonus'; allowed: practice, story" in import_error(tmp_path, path)


# ---------------------------------------------------------------------------
# Exclusion rules


def test_drop_rows_and_drop_participants_are_reported(small_export, tmp_path):
    folder = tmp_path / "downloads"
    frames = write_html_downloads(small_export, folder)
    frames[0].loc[3, "novelty"] = 9  # one bad rating of pid0
    frames[0].to_csv(folder / "ratings_0.csv", index=False)
    frames[1].drop(index=[4]).to_csv(folder / "ratings_1.csv", index=False)  # pid1 incomplete

    result, out = run_import(tmp_path, folder, on_invalid="drop_rows")
    assert len(result.ratings) == 2 + 3  # pid0 lost one row, pid1 all rows, pid2 kept
    report = pd.read_csv(out.with_name("ratings.csv.exclusions.csv"), dtype=str)
    assert set(report["participant_id"]) == {"pid0", "pid1"}
    assert report.loc[report["participant_id"] == "pid0", "reason"].str.contains("outside the scale").all()
    assert (report["rule"] == "drop_rows").all()

    result, out = run_import(tmp_path, folder, on_invalid="drop_participants")
    assert set(result.ratings["participant_id"]) == {"pid2"}
    report = pd.read_csv(out.with_name("ratings.csv.exclusions.csv"), dtype=str)
    assert len(report) == 3 + 2


def test_nothing_left_is_an_error(small_export, tmp_path):
    path = one_html(small_export, tmp_path, lambda f: f.__setitem__("novelty", 0))
    assert "no ratings left" in import_error(tmp_path, path, on_invalid="drop_rows")


# ---------------------------------------------------------------------------
# The command line


def test_cli_export_and_import(tmp_path, run_dir, capsys):
    out_dir = tmp_path / "survey"
    assert cli(["export", f"run_dir={run_dir}", "participants=10", "stories_per_participant=3",
                "stories_per_setting=4", "practice=2", "seed=0", f"out_dir={out_dir}"]) == 0
    assert "ratings per story: 1 to 2" in capsys.readouterr().out
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.glob("**/.hydra"))  # Hydra left nothing
    packets = pd.read_csv(out_dir / "participant" / "packets.csv", dtype=str, keep_default_na=False)
    for criterion in CRITERIA:
        packets[criterion] = "2.5"
    packets.to_csv(tmp_path / "filled.csv", index=False)
    assert cli(["import", f"input={tmp_path / 'filled.csv'}", f"out={tmp_path / 'r.csv'}", "format=long",
                f"key={out_dir / 'researcher' / 'unblinding_key.csv'}"]) == 0
    assert "30 ratings by 10 participants" in capsys.readouterr().out


def test_cli_rejects_typos_and_wrong_types(run_dir, capsys):
    assert cli(["export", f"run_dir={run_dir}", "participnts=3"]) == 2
    assert "participnts" in capsys.readouterr().err
    assert cli(["export", f"run_dir={run_dir}", "participants=many"]) == 2
    assert "could not be converted to Integer" in capsys.readouterr().err
    assert cli(["import", "input=x.csv", "out=y.csv", "format=excel"]) == 2
    assert "format='excel' is not allowed: one of auto, html, long, qualtrics, tidy" in capsys.readouterr().err
    assert cli(["export"]) == 2
    assert "run_dir" in capsys.readouterr().err
    assert cli(["frobnicate"]) == 2
