"""A story depends on its seed alone: not on batch size, on ``n``, or on a resume.

At the default settings (``backend.dtype=auto``, which is bfloat16 on CPUs
with native bfloat16), each story's text and token log-probs must be
byte-identical whatever else was generated beside it. Real model, real
command line.
"""

from __future__ import annotations

import pytest

from experiments.store import read_stories

from .conftest import run_generate

pytestmark = pytest.mark.slow

BASE = ("experiment=demo", "sampling.temperature=1.0", "sampling.max_tokens=32")


def generate(out, *overrides: str) -> dict[str, dict]:
    run_generate(*BASE, *overrides, f"out_dir={out}")
    return {story["story_id"]: story for story in read_stories(out / "stories.jsonl")}


def assert_same_stories(these: dict[str, dict], those: dict[str, dict]) -> None:
    assert these.keys() <= those.keys()
    for story_id, story in these.items():
        assert story["text"] == those[story_id]["text"], f"story {story_id}: text differs"
        assert story["token_logprobs"] == those[story_id]["token_logprobs"], f"story {story_id}: log-probs differ"


def first(stories: dict[str, dict], count: int) -> dict[str, dict]:
    return {key: story for key, story in stories.items() if story["sample_index"] < count}


def test_hf_story_does_not_depend_on_batch_size(tmp_path):
    # 20 stories: more than one row tile at batch 64, one row at a time at batch 1.
    batched = generate(tmp_path / "b64", "sampling.n=20", "backend.batch_size=64")
    alone = generate(tmp_path / "b1", "sampling.n=20", "backend.batch_size=1")
    assert len(batched) == len(alone) == 20
    assert_same_stories(alone, batched)


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_story_does_not_depend_on_n_or_on_a_resume(tmp_path, backend):
    six = generate(tmp_path / "six", f"backend={backend}", "sampling.n=6")
    three = generate(tmp_path / "grown", f"backend={backend}", "sampling.n=3")
    assert len(three) == 3
    assert_same_stories(three, first(six, 3))
    # Extending the same store to n=6 generates the other three in a batch of their own.
    grown = generate(tmp_path / "grown", f"backend={backend}", "sampling.n=6")
    assert len(grown) == 6
    assert_same_stories(grown, six)
