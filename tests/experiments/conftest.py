"""Fixtures of the generate-stage tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiments.generate  # noqa: F401  (registers the config schemas)

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


@pytest.fixture
def compose_config():
    """Compose the generate config as the command line would, with overrides."""
    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


def run_generate(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m experiments.generate ARGS`` in a real subprocess from the repo root."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "experiments.generate", *args, "progress=false"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"generate {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result
