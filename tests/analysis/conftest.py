"""Fixtures of the analysis tests: small synthetic runs with the exact on-disk contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.synthetic import build_synthetic_run


@pytest.fixture
def synthetic_run(tmp_path: Path) -> dict[str, Path]:
    """3 temperatures x 2 top-p x 6 stories, each story rated by 3 of 8 participants."""
    return build_synthetic_run(tmp_path / "run", temperatures=(0.2, 1.0, 1.8), top_ps=(0.5, 1.0),
                               stories_per_setting=6, n_participants=8, ratings_per_story=3, seed=3)


@pytest.fixture
def temperature_run(tmp_path: Path) -> dict[str, Path]:
    """A one-parameter sweep (temperature only), no ratings."""
    return build_synthetic_run(tmp_path / "run1", temperatures=(0.5, 1.0, 1.5), top_ps=(1.0,),
                               stories_per_setting=5, n_participants=None, seed=4)
