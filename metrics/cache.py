"""A content-addressed cache of model outputs (embeddings, scorer log-likelihoods).

An entry's key is the SHA-256 of everything that determines the value (model
identity, settings that change the result, the text and, for the scorer, the
prompt), so re-running after adding stories computes only the new ones, and
a changed model or setting never returns a stale value.

One SQLite file under the harness cache (never inside the package): it is in
the standard library, safe for several processes at once, and stores a few
thousand small binary values without one file each.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from experiments.models import cache_dir

CACHE_FILE = "metrics-cache.sqlite"


def folder_identity(path: Path) -> str:
    """A model folder's identity for cache keys: its path, config.json's hash and its weight files' sizes.

    Hashing gigabytes of weights on every run would cost more than it saves;
    a retrained model in the same folder changes its files' sizes or config.
    """
    path = Path(path).resolve()
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else "no-config"
    weights = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
    weights += sorted((p.name, p.stat().st_size) for p in path.glob("*.bin"))
    return f"{path}:config-sha256:{digest}:weights:{weights}"


def content_key(*parts: Any) -> str:
    """SHA-256 (hex) of the JSON encoding of ``parts``."""
    encoded = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


class ContentCache:
    """Binary values by (namespace, key) in one SQLite file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS entries ("
                "namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
                "PRIMARY KEY (namespace, key))")

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=120)
        # WAL lets readers go on while another process of a sweep writes.
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        connection = self._connect()
        try:
            for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
                batch = keys[start:start + 500]
                marks = ",".join("?" * len(batch))
                rows = connection.execute(
                    f"SELECT key, value FROM entries WHERE namespace = ? AND key IN ({marks})",
                    [namespace, *batch])
                found.update(rows)
        finally:
            connection.close()
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, namespace: str, values: dict[str, bytes]) -> None:
        if not values:
            return
        connection = self._connect()
        try:
            with connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO entries (namespace, key, value) VALUES (?, ?, ?)",
                    [(namespace, key, value) for key, value in values.items()])
        finally:
            connection.close()
