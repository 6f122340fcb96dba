"""Stand-ins for the models, so that only tests marked slow load a real one."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Optional, Sequence

import numpy as np

from metrics.config import MetricsConfig
from metrics.scorer import Score
from metrics.text import has_content, word_tokens


class BagOfWordsEmbedder:
    """Deterministic stand-in for a sentence-transformers model: hashed word counts, L2-normalised."""

    def __init__(self, dimensions: int = 32):
        self.dimensions = dimensions
        self.calls: list[list[str]] = []

    def describe(self) -> dict[str, Any]:
        return {"model": "bag-of-words (test)", "model_id": f"bow-{self.dimensions}", "pooling": "none",
                "window_tokens": 10**9, "precision": "float64"}

    def token_ids(self, text: str) -> list[int]:
        return [int(hashlib.md5(w.encode()).hexdigest()[:6], 16) for w in word_tokens(text)]

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(list(texts))
        vectors = np.full((len(texts), self.dimensions), np.nan, dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            if not has_content(text):
                continue
            vector = np.zeros(self.dimensions)
            for token in self.token_ids(text):
                vector[token % self.dimensions] += 1.0
            counts[i] = len(self.token_ids(text))
            vectors[i] = vector / np.linalg.norm(vector) if vector.any() else np.nan
        return vectors, counts


class ConstantScorer:
    """Stand-in scorer: every word costs ``nll_per_token`` nats, so perplexity = exp(nll_per_token)."""

    def __init__(self, nll_per_token: float = math.log(4.0)):
        self.nll_per_token = nll_per_token
        self.calls: list[tuple[list[str], list[Optional[str]]]] = []

    def describe(self) -> dict[str, Any]:
        return {"model": "constant (test)", "model_id": "constant", "precision": "float64",
                "max_length": 1000, "stride": 500}

    def token_ids(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def score(self, texts, prompts, progress: bool = True) -> list[Score]:
        self.calls.append((list(texts), list(prompts)))
        return [Score(nll=self.nll_per_token * max(len(t), 1), n_tokens=max(len(t), 1), n_windows=1)
                for t in texts]


def quiet_config(**overrides: Any) -> MetricsConfig:
    """A MetricsConfig for tests: no cache, no progress bars, one worker."""
    return MetricsConfig(**{"cache": False, "progress": False, "workers": 1, **overrides})
