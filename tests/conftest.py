"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    """The published data of the study, read from ../shared/paper (never copied in).

    Override with HARNESS_PAPER_DIR. Tests that need it are skipped, with the
    reason, when the folder is absent.
    """
    path = Path(os.environ.get("HARNESS_PAPER_DIR", REPO.parent / "shared" / "paper"))
    if not (path / "survey_data_by_evaluation.csv.tar.gz").exists():
        pytest.skip(f"paper data not found at {path} (set HARNESS_PAPER_DIR or place ../shared/paper beside the repo)")
    return path
