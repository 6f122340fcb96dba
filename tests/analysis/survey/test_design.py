"""Balance of the assignment, story selection and the exemplar."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from analysis.survey.config import ShortSettings, SurveyError
from analysis.survey.design import Selection, Story, assign, balance_report, select_stories, williams_rows

from .synthetic import export, setting_id_for, write_run


def fake_selection(n_settings: int, per_setting: int) -> Selection:
    rated = {f"s{i}": [Story(f"s{i}-{j}", f"s{i}", f"text {i} {j}") for j in range(per_setting)]
             for i in range(n_settings)}
    return Selection(exemplar=Story("e", "", "exemplar"), rated=rated, practice=[])


def check_balance(slots, selection, n_participants, per_participant):
    n_settings = len(selection.rated)
    # Every participant gets a full packet of different stories.
    for p in range(n_participants):
        mine = [s for s in slots if s.participant == p]
        assert sorted(s.position for s in mine) == list(range(per_participant))
        assert len({s.story.story_id for s in mine}) == per_participant
        if per_participant <= n_settings:  # no setting twice in a packet
            assert len({s.setting_id for s in mine}) == per_participant
    # Stories, settings and (setting, position) cells: equal counts plus or minus one.
    per_story = Counter(s.story.story_id for s in slots)
    assert len(per_story) == sum(len(v) for v in selection.rated.values())  # every story rated
    assert max(per_story.values()) - min(per_story.values()) <= 1
    per_setting = Counter(s.setting_id for s in slots)
    assert len(per_setting) == n_settings
    assert max(per_setting.values()) - min(per_setting.values()) <= 1
    cells = Counter((s.setting_id, s.position) for s in slots)
    for position in range(per_participant):
        counts = [cells.get((setting, position), 0) for setting in selection.rated]
        assert max(counts) - min(counts) <= 1, (position, counts)


@pytest.mark.parametrize(("participants", "per_participant", "settings", "per_setting"), [
    (36, 5, 7, 5),  # the paper's size
    (10, 3, 7, 4),
    (7, 7, 7, 1),  # a full Latin square
    (11, 4, 5, 3),  # odd everything
    (13, 5, 6, 4),  # even number of settings
    (9, 6, 4, 3),  # packets longer than the number of settings
    (5, 2, 3, 2),
    (1, 3, 3, 1),
    (37, 5, 7, 5),
])
def test_assignment_is_balanced(participants, per_participant, settings, per_setting):
    selection = fake_selection(settings, per_setting)
    slots = assign(selection, participants, per_participant, np.random.default_rng(0))
    check_balance(slots, selection, participants, per_participant)


def test_balance_holds_for_every_small_size():
    for settings in range(1, 8):
        for per_participant in range(1, settings + 2):
            for participants in range(1, 2 * settings + 3):
                per_setting = max(1, -(-per_participant // settings))
                if participants * per_participant < settings * per_setting:
                    continue
                selection = fake_selection(settings, per_setting)
                slots = assign(selection, participants, per_participant, np.random.default_rng(participants))
                check_balance(slots, selection, participants, per_participant)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_williams_rows_are_latin_and_carryover_balanced(n):
    rows = williams_rows(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    for row in rows:
        assert sorted(row) == list(range(n))
    for position in range(n):  # every setting once per position in each square
        assert Counter(row[position] for row in rows) == Counter({s: len(rows) // n for s in range(n)})
    pairs = Counter((row[j], row[j + 1]) for row in rows for j in range(n - 1))
    assert len(set(pairs.values())) == 1 and len(pairs) == n * (n - 1)  # each ordered pair equally often


def test_same_seed_same_design_other_seed_other_design(tmp_path, run_dir):
    first = export(run_dir, tmp_path / "a", seed=3)
    again = export(run_dir, tmp_path / "b", seed=3)
    other = export(run_dir, tmp_path / "c", seed=4)
    read = lambda result: (result.out_dir / "researcher" / "design.csv").read_text()  # noqa: E731
    assert read(first) == read(again)
    assert read(first) != read(other)


def test_export_report_and_design_of_the_paper_size(tmp_path, run_dir):
    result = export(run_dir, tmp_path / "survey", participants=36, stories_per_participant=5, practice=2, seed=0)
    balance = result.summary["balance"]
    assert balance["stories"] == 35 and balance["settings"] == 7
    for kind in ("ratings_per_story", "ratings_per_setting", "ratings_per_setting_and_position"):
        assert balance[kind]["max"] - balance[kind]["min"] <= 1
    design = pd.read_csv(result.out_dir / "researcher" / "design.csv", dtype=str)
    assert len(design) == 180
    assert design.groupby("participant").size().eq(5).all()
    assert not design.duplicated(["participant", "story_id"]).any()


def frame_of(run):
    from experiments.store import stories_frame

    return stories_frame(run / "stories.jsonl")


def test_exemplar_is_the_lowest_temperature_story_and_never_rated(run_dir):
    stories = frame_of(run_dir)
    selection = select_stories(stories, 5, 2, ShortSettings.error, np.random.default_rng(0))
    lowest = stories.loc[stories["temperature"] == stories["temperature"].min()].sort_values("sample_index")
    assert selection.exemplar.story_id == lowest["story_id"].iloc[0]
    rated_ids = {s.story_id for v in selection.rated.values() for s in v}
    practice_ids = {s.story_id for s in selection.practice}
    assert selection.exemplar.story_id not in rated_ids | practice_ids
    assert not rated_ids & practice_ids
    assert len(selection.practice) == 2
    assert len({s.setting_id for s in selection.practice}) == 2  # practice spans settings


def test_exemplar_from_a_file(tmp_path, run_dir):
    exemplar = tmp_path / "exemplar.txt"
    exemplar.write_text("Once upon a time.\n\nThe end.\n")
    result = export(run_dir, tmp_path / "survey", exemplar=str(exemplar))
    assert (result.out_dir / "participant" / "exemplar.txt").read_text() == "Once upon a time.\n\nThe end.\n"
    with pytest.raises(SurveyError, match="no such file"):
        export(run_dir, tmp_path / "other", exemplar=str(tmp_path / "missing.txt"))


def test_greedy_setting_with_one_distinct_story(tmp_path):
    run = write_run(tmp_path / "run", greedy_duplicates=True)
    greedy = setting_id_for(0.001)
    with pytest.raises(SurveyError, match=f"{greedy} \\(1 distinct\\).*short_settings=drop"):
        export(run, tmp_path / "a")
    dropped = export(run, tmp_path / "b", short_settings="drop")
    assert dropped.summary["balance"]["settings"] == 6
    assert any("short_settings=drop" in note for note in dropped.summary["balance"]["notes"])
    kept = export(run, tmp_path / "c", short_settings="repeat", stories_per_setting=5)
    design = pd.read_csv(kept.out_dir / "researcher" / "design.csv", dtype=str)
    assert design.loc[design["setting_id"] == greedy, "story_id"].nunique() == 1
    assert kept.summary["balance"]["settings"] == 7


def test_too_few_ratings_for_the_stories(tmp_path, run_dir):
    with pytest.raises(SurveyError, match="cannot rate each of the 35 chosen stories"):
        export(run_dir, tmp_path / "a", participants=2, stories_per_participant=3)


def test_not_enough_stories_for_practice(tmp_path):
    run = write_run(tmp_path / "run", temperatures=(0.5, 1.0), per_setting=3)  # 5 stories besides the exemplar
    with pytest.raises(SurveyError, match="only 1 stories are left for practice"):
        export(run, tmp_path / "a", stories_per_setting=2, practice=2)


def test_missing_run_and_existing_export(tmp_path, run_dir):
    with pytest.raises(SurveyError, match="no stories.jsonl"):
        export(tmp_path / "nowhere", tmp_path / "a")
    export(run_dir, tmp_path / "b")
    with pytest.raises(SurveyError, match="overwrite=true"):
        export(run_dir, tmp_path / "b")
    export(run_dir, tmp_path / "b", overwrite=True)


def test_balance_report_counts():
    selection = fake_selection(2, 1)
    slots = assign(selection, 3, 2, np.random.default_rng(1))
    report = balance_report(slots, selection)
    assert report["ratings_per_story"] == {"min": 3, "max": 3}
    assert report["ratings_per_setting_and_position"]["max"] - report["ratings_per_setting_and_position"]["min"] <= 1
