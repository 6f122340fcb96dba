"""What a result records about the software that made it."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("creativity-harness", "torch", "transformers", "llama-cpp-python", "hydra-core", "omegaconf",
            "numpy", "sentence-transformers", "openai", "gguf")

_REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def harness_version() -> str:
    """The package version plus the git commit it runs from (``+dirty`` with uncommitted changes)."""
    version = metadata.version("creativity-harness")
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{version}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
