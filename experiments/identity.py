"""Stable ids and seeds for settings and stories.

An id is a hash of everything that makes a story what it is, so resuming a
sweep, or running it again, finds the same ids; the sample index is part of
every key, so sampled stories are never collapsed into one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from experiments.config import SamplingConfig

# Not part of a story's setting: how many stories to make is not how one is made.
_NOT_SETTING = {"n"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:length]


def setting_of(sampling: SamplingConfig) -> dict[str, Any]:
    """The decoding parameters of a story: every sampling field that is set, but ``n``."""
    setting = {}
    for field in dataclasses.fields(sampling):
        value = getattr(sampling, field.name)
        if field.name in _NOT_SETTING or value is None:
            continue
        if isinstance(value, dict):
            value = {str(key): value[key] for key in sorted(value)}
        setting[field.name] = list(value) if isinstance(value, (list, tuple)) else value
    return setting


def setting_id(setting: dict[str, Any], prompt_id: str, prompt_text: str, backend: str, model_sha256: str) -> str:
    """One setting of one sweep: decoding parameters, prompt, backend and model."""
    return _digest("setting", setting, prompt_id, prompt_text, backend, model_sha256)


def story_id(setting_id_: str, sample_index: int) -> str:
    return _digest("story", setting_id_, sample_index)


def story_seed(setting: dict[str, Any], prompt_text: str, sample_index: int) -> int:
    """A story's own seed, from (base seed, setting, prompt, sample index).

    The backend and model are left out on purpose: the same story slot gets the
    same seed on every backend, which makes backends comparable. Kept below
    2**31 so that every runtime accepts it.
    """
    digest = hashlib.sha256(canonical_json(["seed", setting, prompt_text, sample_index]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)
