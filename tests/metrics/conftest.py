"""Fixtures of the metrics tests: stand-in models and a private cache directory."""

from __future__ import annotations

import pytest

from tests.metrics.fakes import BagOfWordsEmbedder, ConstantScorer


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path_factory, monkeypatch):
    """Fast tests never touch the user's cache. Slow tests keep it (it holds the converted
    scorer weights) and set metrics cache=False instead."""
    if request.node.get_closest_marker("slow"):
        return
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.mktemp("harness-cache")))


@pytest.fixture
def embedder() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder()


@pytest.fixture
def scorer() -> ConstantScorer:
    return ConstantScorer()
