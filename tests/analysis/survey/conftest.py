"""Fixtures of the survey tests: a synthetic run and a small export of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .synthetic import export, write_run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


@pytest.fixture
def small_export(tmp_path: Path, run_dir: Path):
    """7 settings x 4 stories, 10 participants x 3 stories, 2 practice stories."""
    return export(run_dir, tmp_path / "survey", participants=10, stories_per_participant=3, stories_per_setting=4)
