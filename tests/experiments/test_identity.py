"""Ids and seeds are stable, distinct where they must be, and independent of the backend."""

from experiments.config import SamplingConfig
from experiments.identity import setting_id, setting_of, story_id, story_seed


def test_setting_leaves_out_n_and_unset_parameters():
    setting = setting_of(SamplingConfig(temperature=0.7, top_k=50, n=100, seed=3))
    assert "n" not in setting and "min_p" not in setting
    assert setting["temperature"] == 0.7 and setting["seed"] == 3 and setting["top_k"] == 50


def test_ids_are_stable_and_change_with_anything_that_changes_the_story():
    setting = setting_of(SamplingConfig(temperature=0.7))
    base = setting_id(setting, "paper", "P", "hf", "abc")
    assert base == setting_id(dict(reversed(list(setting.items()))), "paper", "P", "hf", "abc")
    others = {
        setting_id(setting_of(SamplingConfig(temperature=0.8)), "paper", "P", "hf", "abc"),
        setting_id(setting, "other", "P", "hf", "abc"),
        setting_id(setting, "paper", "Q", "hf", "abc"),
        setting_id(setting, "paper", "P", "llamacpp", "abc"),
        setting_id(setting, "paper", "P", "hf", "abd"),
    }
    assert base not in others and len(others) == 5
    assert story_id(base, 0) != story_id(base, 1)


def test_seeds_differ_per_sample_and_base_seed_but_not_per_backend():
    setting = setting_of(SamplingConfig(temperature=0.7, seed=0))
    seeds = [story_seed(setting, "P", index) for index in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= seed < 2**31 for seed in seeds)
    assert story_seed(setting_of(SamplingConfig(temperature=0.7, seed=1)), "P", 0) != seeds[0]
    assert story_seed(setting, "P", 0) == seeds[0]
