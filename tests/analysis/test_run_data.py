"""load_run reads the store through experiments.store.story_table, the one table of stories."""

from __future__ import annotations

import json

import pandas as pd

from analysis.run_data import load_run


def _run(tmp_path, stories):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stories), encoding="utf-8")
    pd.DataFrame({"story_id": [str(s["story_id"]) for s in stories],
                  "perplexity": [float(i) for i in range(len(stories))]}).to_parquet(run_dir / "metrics.parquet")
    return run_dir


def _stories():
    # Two base seeds and two temperatures; each story's own seed differs from its setting's base seed.
    return [{"story_id": f"s{i}", "setting_id": f"T{t}-b{base}", "seed": 100 + i, "model": "m",
             "text": "x", "token_logprobs": [-1.0],
             "setting": {"temperature": t, "seed": base, "setting_id": "a parameter", "top_k": 50}}
            for i, (t, base) in enumerate([(0.5, 0), (0.5, 1), (1.5, 0), (1.5, 1)])]


def test_the_base_seed_is_a_column_of_its_own_and_excluded_as_seed(tmp_path):
    run = load_run(_run(tmp_path, _stories()))
    frame = run.stories.set_index("story_id")
    assert frame["base_seed"].tolist() == [0, 1, 0, 1]
    # A parameter named like a story field is a column of its own; the story's field survives.
    assert frame["setting_id"].tolist() == ["T0.5-b0", "T0.5-b1", "T1.5-b0", "T1.5-b1"]
    assert frame["setting.setting_id"].tolist() == ["a parameter"] * 4
    assert run.setting_keys == ["base_seed", "setting.setting_id", "temperature", "top_k"]
    # exclude_parameters names the setting's key ("seed", the default) or its column ("base_seed").
    assert run.swept == ["temperature"]
    assert load_run(run.run_dir, exclude_parameters=("base_seed",)).swept == ["temperature"]
    assert load_run(run.run_dir, exclude_parameters=()).swept == ["base_seed", "temperature"]
    assert run.metrics == ["perplexity"]
    assert "text" not in frame and "token_logprobs" not in frame  # ids and settings only


def test_a_story_without_a_setting_id_is_labelled_none(tmp_path):
    stories = _stories()
    del stories[0]["setting_id"]
    run = load_run(_run(tmp_path, stories))
    assert run.stories["setting_id"].tolist()[0] == "None"


def test_a_parameter_set_in_some_settings_and_unset_in_others_is_not_a_predictor(tmp_path):
    # A comparison of samplers: min_p 0.1 where min-p runs, unset elsewhere; temperature is swept in both.
    stories = [{"story_id": f"s{i}", "setting_id": f"{name}-{t}", "text": "x",
                "setting": {"temperature": t, **({"min_p": 0.1} if name == "min_p" else {})}}
               for i, (name, t) in enumerate([("temperature", 0.5), ("temperature", 1.5), ("min_p", 0.5),
                                              ("min_p", 1.5)])]
    run = load_run(_run(tmp_path, stories))
    assert run.swept == ["temperature"] and "min_p" in run.setting_keys
