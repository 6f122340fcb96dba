"""The story store: append, resume, torn lines, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from experiments.store import StoreError, StoryStore, read_stories, repair_torn_tail, stories_frame


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
