"""Synthetic runs with the exact on-disk contract, for tests, benchmarks and demos.

Writes ``stories.jsonl``, ``metrics.parquet``, ``diversity.parquet``,
``metrics.json``, ``jobs/<setting_id>/config.yaml`` and (optionally) a long
``ratings.csv``. Metrics and ratings depend on temperature (and top-p) with
known slopes plus noise, so the analysis has something real to find.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from experiments.files import write_atomic

WORDS = "the a girl boy forest tree path light river old village night star voice door".split()
NOVELTY_SLOPE = 0.4  # per unit temperature, the true fixed effect in the synthetic ratings


def _setting_id(setting: dict) -> str:
    text = json.dumps(setting, sort_keys=True)
    return "s-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def build_synthetic_run(
    run_dir: str | Path,
    temperatures: Sequence[float] = (0.001, 0.5, 1.0, 1.5, 2.0),
    top_ps: Sequence[float] = (1.0,),
    stories_per_setting: int = 20,
    n_participants: int | None = 12,
    ratings_per_story: int = 3,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a run; return the paths written (``ratings`` only when ``n_participants``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stories, metric_rows = [], []
    for temperature, top_p in itertools.product(temperatures, top_ps):
        setting = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 50, "max_tokens": 256,
                   "seed": seed}
        setting_id = _setting_id(setting)
        job_dir = run_dir / "jobs" / setting_id
        job_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(job_dir / "config.yaml",
                          "sampling:\n" + "".join(f"  {k}: {v}\n" for k, v in setting.items())
                          + "backend:\n  name: synthetic\nprompt:\n  id: paper\n")
        spread = temperature * top_p
        for index in range(stories_per_setting):
            story_id = hashlib.sha256(f"{setting_id}/{index}".encode()).hexdigest()[:12]
            n_tokens = int(rng.integers(80, 200))
            text = " ".join(rng.choice(WORDS, size=n_tokens // 2))
            stories.append({
                "story_id": story_id, "setting_id": setting_id, "setting": setting, "seed": seed + index,
                "sample_index": index, "backend": "synthetic", "model": "synthetic", "prompt_id": "paper",
                "prompt": "Write a story.", "messages": None, "text": text, "n_tokens": n_tokens,
                "finish_reason": "stop", "token_logprobs": None, "latency_s": 0.0,
                "created_at": "2024-01-01T00:00:00Z", "harness_version": "0.1.0",
            })
            metric_rows.append({
                "story_id": story_id,
                "perplexity": float(np.exp(0.5 + 0.8 * spread + rng.normal(0, 0.1))),
                "perplexity_scorer": float(np.exp(1.0 + 0.6 * spread + rng.normal(0, 0.1))),
                "prototype_cos_sim": float(np.clip(0.9 - 0.15 * spread + rng.normal(0, 0.05), -1, 1)),
                "prototype_edit_dist_norm": float(np.clip(0.3 + 0.25 * spread + rng.normal(0, 0.05), 0, 1)),
                "pca_x": float(rng.normal(spread, 0.3 + 0.3 * spread)),
                "pca_y": float(rng.normal(0, 0.3 + 0.3 * spread)),
            })
    with open(run_dir / "stories.jsonl", "w", encoding="utf-8") as handle:
        for story in stories:
            handle.write(json.dumps(story) + "\n")
    metrics = pd.DataFrame(metric_rows)
    metrics.to_parquet(run_dir / "metrics.parquet", index=False)
    frame = pd.DataFrame([{**s["setting"], "setting_id": s["setting_id"], "story_id": s["story_id"]} for s in stories])
    diversity = (frame.merge(metrics, on="story_id").groupby("setting_id")
                 .agg(temperature=("temperature", "first"), top_p=("top_p", "first"),
                      mean_pairwise_cos_dist=("pca_x", "std"), distinct_2=("prototype_edit_dist_norm", "mean"))
                 .reset_index())
    diversity.to_parquet(run_dir / "diversity.parquet", index=False)
    write_atomic(run_dir / "metrics.json", json.dumps({
        "metrics": {"perplexity": "synthetic", "prototype_cos_sim": "synthetic"},
        "pca": {"explained_variance_ratio": [0.4, 0.2], "exemplar_coordinates": {"prototype": [0.0, 0.0]}},
    }, indent=2))
    paths = {"run_dir": run_dir, "stories": run_dir / "stories.jsonl", "metrics": run_dir / "metrics.parquet"}
    if n_participants:
        paths["ratings"] = run_dir / "ratings.csv"
        synthetic_ratings(frame, n_participants, ratings_per_story, rng).to_csv(paths["ratings"], index=False)
    return paths


def synthetic_ratings(stories: pd.DataFrame, n_participants: int, ratings_per_story: int,
                      rng: np.random.Generator) -> pd.DataFrame:
    """Each story rated by ``ratings_per_story`` distinct participants; participant offsets are random intercepts."""
    participants = [f"p{i:03d}" for i in range(n_participants)]
    offsets = dict(zip(participants, rng.normal(0, 0.5, n_participants)))
    rows = []
    for story in stories.itertuples():
        for participant in rng.choice(participants, size=min(ratings_per_story, n_participants), replace=False):
            base = 3 + offsets[participant]
            values = {
                "novelty": base + NOVELTY_SLOPE * story.temperature,
                "typicality": base - 0.2 * story.temperature,
                "cohesion": base - 0.3 * story.temperature,
                "coherence": base - 0.5 * story.temperature,
            }
            rows.append({"story_id": story.story_id, "participant_id": participant,
                         **{k: float(np.clip(v + rng.normal(0, 0.6), 1, 5)) for k, v in values.items()},
                         "genai_familiarity": int(rng.integers(1, 6))})
    return pd.DataFrame(rows)
