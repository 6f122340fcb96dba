"""The story store: append, resume, torn lines, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from experiments.store import (StoreError, StoryStore, read_stories, repair_torn_tail, stories_frame,
                               story_table)


def story(index: int, **extra) -> dict:
    return {"story_id": f"s{index}", "text": f"story {index} <b>é</b>", "setting": {"temperature": 0.5}, **extra}


def test_append_writes_one_line_per_story_and_skips_known_ids(tmp_path):
    store = StoryStore(tmp_path)
    assert store.append(story(1)) and store.append(story(2))
    assert not store.append(story(1))
    lines = (tmp_path / "stories.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["story_id"] for line in lines] == ["s1", "s2"]
    assert StoryStore(tmp_path).existing_ids() == {"s1", "s2"}


def test_a_torn_last_line_is_dropped_kept_aside_and_reported(tmp_path, caplog):
    store = StoryStore(tmp_path)
    store.append(story(1))
    with open(tmp_path / "stories.jsonl", "ab") as handle:
        handle.write(b'{"story_id": "s2", "text": "cut sh')
    assert StoryStore(tmp_path).existing_ids() == {"s1"}
    assert "torn" in caplog.text
    assert (tmp_path / "stories.jsonl.torn").read_bytes().startswith(b'{"story_id": "s2"')
    # The store is whole again and takes the story that was lost.
    assert StoryStore(tmp_path).append(story(2))
    assert [s["story_id"] for s in read_stories(tmp_path / "stories.jsonl")] == ["s1", "s2"]


def test_repair_leaves_a_whole_file_alone(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text('{"story_id": "a"}\n{"story_id": "b"}\n')
    assert repair_torn_tail(path) == 0
    assert path.read_text().count("\n") == 2


def test_repair_handles_a_single_torn_line_longer_than_a_block(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_bytes(b'{"story_id": "x", "text": "' + b"y" * 200_000)
    assert repair_torn_tail(path) == 200_000 + 27
    assert path.read_bytes() == b""


def test_a_corrupt_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text('{"story_id": "a"}\nnot json\n{"story_id": "b"}\n')
    with pytest.raises(StoreError, match="line 2"):
        read_stories(path)


def test_stories_frame_flattens_the_setting(tmp_path):
    StoryStore(tmp_path).append(story(1, token_logprobs=[-1.0]))
    frame = stories_frame(tmp_path / "stories.jsonl")
    assert list(frame["temperature"]) == [0.5] and "token_logprobs" not in frame


def _writer(directory: str, worker: int, count: int) -> None:
    store = StoryStore(directory)
    for index in range(count):
        # Every worker also tries to write the shared ids: exactly one copy may land.
        store.append(story(index, worker=worker, padding="x" * 5000))
        store.append({"story_id": f"w{worker}-{index}", "text": "z" * 20000})


def test_concurrent_writers_never_tear_or_duplicate(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), worker, 25)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    lines = (tmp_path / "stories.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    ids = [json.loads(line)["story_id"] for line in lines[:-1]]
    assert len(ids) == len(set(ids)) == 25 + 4 * 25


def test_stories_frame_keeps_the_story_seed_apart_from_the_base_seed(tmp_path):
    StoryStore(tmp_path).append({"story_id": "a", "seed": 12345, "setting": {"seed": 0, "temperature": 1.0}})
    frame = stories_frame(tmp_path / "stories.jsonl")
    assert frame.loc[0, "seed"] == 12345 and frame.loc[0, "base_seed"] == 0


def _store_of_seeded_stories(tmp_path) -> list[dict]:
    """Stories whose own seeds differ from their setting's base seed, and with fields named like parameters."""
    stories = [
        {"story_id": f"s{index}", "setting_id": f"T{temperature}", "seed": 1000 * base + 17 * index + 3,
         "sample_index": index, "model": "the-model", "text": f"story {index}", "token_logprobs": [-0.5, None],
         "setting": {"temperature": temperature, "seed": base, "model": "setting-model", "stop": ["\n\n"]}}
        for index, (temperature, base) in enumerate([(0.5, 0), (0.5, 0), (1.5, 7), (1.5, 7), (2.0, 0)])
    ]
    store = StoryStore(tmp_path)
    for story in stories:
        store.append(story)
    return stories


def test_story_table_keeps_every_story_seed_and_the_base_seed_apart(tmp_path):
    stories = _store_of_seeded_stories(tmp_path)
    table = story_table(tmp_path / "stories.jsonl")
    frame = table.frame
    assert frame["seed"].tolist() == [s["seed"] for s in stories]
    assert frame["base_seed"].tolist() == [s["setting"]["seed"] for s in stories]
    assert all(s["seed"] != s["setting"]["seed"] for s in stories)
    assert table.setting_columns == {"temperature": "temperature", "base_seed": "seed",
                                     "setting.model": "model", "stop": "stop"}


def test_story_table_setting_columns_never_clobber_a_story_field(tmp_path):
    stories = _store_of_seeded_stories(tmp_path)
    frame = story_table(tmp_path / "stories.jsonl", with_logprobs=True).frame
    for row, story in zip(frame.to_dict("records"), stories):
        for key, value in story.items():
            if key == "setting":
                continue
            if key == "token_logprobs":
                assert np.array_equal(row[key], [-0.5, np.nan], equal_nan=True) and row[key].dtype == np.float64
            else:
                assert row[key] == value, key
        assert row["setting.model"] == "setting-model" and row["model"] == "the-model"
        assert row["stop"] == '["\\n\\n"]'


def test_story_table_fields_and_prepare(tmp_path):
    _store_of_seeded_stories(tmp_path)
    seen = []

    def prepare(record, story):
        seen.append(record)
        return {**story, "text": story["text"].upper()}

    table = story_table(tmp_path / "stories.jsonl", fields=["setting_id", "text"], prepare=prepare)
    assert seen == [1, 2, 3, 4, 5]
    # Column names do not depend on the fields kept: the setting's model is still setting.model.
    assert list(table.frame.columns) == ["story_id", "setting_id", "text", "temperature", "base_seed",
                                         "setting.model", "stop"]
    assert table.frame["text"][0] == "STORY 0"


def test_story_table_names_each_clashing_parameter_apart(tmp_path):
    StoryStore(tmp_path).append({"story_id": 7, "seed": 1, "base_seed": 2, "setting.seed": 3,
                                 "setting": {"seed": 4, "base_seed": 5}})
    table = story_table(tmp_path / "stories.jsonl")
    row = table.frame.iloc[0].to_dict()
    assert row["story_id"] == "7"
    assert (row["seed"], row["base_seed"], row["setting.seed"]) == (1, 2, 3)
    assert row["setting.base_seed"] == 4 and row["setting.setting.base_seed"] == 5
    assert table.setting_columns == {"setting.base_seed": "seed", "setting.setting.base_seed": "base_seed"}


def test_stories_frame_is_the_story_table(tmp_path):
    _store_of_seeded_stories(tmp_path)
    path = tmp_path / "stories.jsonl"
    assert stories_frame(path).equals(story_table(path).frame)
    assert "token_logprobs" not in stories_frame(path) and "token_logprobs" in stories_frame(path, True)


def test_a_parameter_gets_one_column_for_the_whole_table(tmp_path):
    # Only the second story has a field "model": the first story's setting model must not land in that column.
    store = StoryStore(tmp_path)
    store.append({"story_id": "a", "setting": {"model": "x", "temperature": 1.0}})
    store.append({"story_id": "b", "model": "own", "setting": {"model": "y"}})
    table = story_table(tmp_path / "stories.jsonl")
    assert table.frame["model"].tolist()[1] == "own" and table.frame["model"].isna().tolist() == [True, False]
    assert table.frame["setting.model"].tolist() == ["x", "y"]
    assert table.frame["temperature"].tolist()[0] == 1.0 and table.frame["temperature"].isna().tolist()[1]
    assert table.setting_columns == {"setting.model": "model", "temperature": "temperature"}


def test_an_empty_store_is_an_empty_table(tmp_path):
    (tmp_path / "stories.jsonl").write_text("")
    table = story_table(tmp_path / "stories.jsonl")
    assert table.frame.empty and table.setting_columns == {}
