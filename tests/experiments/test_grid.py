"""The in-process grid expansion of hydra.sweeper.params."""

from experiments.generate import grid_overrides


def test_grid_is_the_cartesian_product():
    combos = grid_overrides({"sampling.temperature": "0.5,1.0", "sampling.top_p": "0.9,1.0"}, [])
    assert sorted(map(tuple, combos)) == sorted([
        ("sampling.temperature=0.5", "sampling.top_p=0.9"), ("sampling.temperature=0.5", "sampling.top_p=1.0"),
        ("sampling.temperature=1.0", "sampling.top_p=0.9"), ("sampling.temperature=1.0", "sampling.top_p=1.0")])


def test_a_key_given_on_the_command_line_wins_over_the_grid():
    combos = grid_overrides({"sampling.temperature": "0.5,1.0", "sampling.seed": "1,2"},
                            ["experiment=paper", "sampling.temperature=0.7"])
    assert combos == [["sampling.seed=1"], ["sampling.seed=2"]]


def test_hydra_sweep_syntax_is_understood():
    combos = grid_overrides({"sampling.seed": "range(0,3)"}, [])
    assert combos == [["sampling.seed=0"], ["sampling.seed=1"], ["sampling.seed=2"]]


def test_no_grid_is_one_empty_combination():
    assert grid_overrides({}, []) == [[]]
