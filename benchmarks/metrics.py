"""Time the metrics stage on synthetic runs of 100, 700 and 2,800 stories, and
the re-scored perplexity in tokens per second.

    .venv/bin/python -m benchmarks.metrics [--sizes 100 700 2800] [--scorer-stories 4]

(as a module from the repository root: run as a script, this file would
shadow the metrics package).

Stories are about 2,500 characters, made (seeded) by recombining the
sentences of the paper's survey stories when ../shared/paper is there
(HARNESS_PAPER_DIR overrides), else from a built-in word list. They are
spread over the paper's 7 temperatures, so 700 stories are 100 per setting,
as in the paper. Each size runs in a fresh process with an empty cache
(HARNESS_CACHE_DIR in a temporary folder), so the table shows a cold
``python -m metrics.compute ... metrics=fast`` (everything but the re-scored
perplexity): model loading, embedding, edit distances, PCA, diversity and
writing the files. Peak RSS is that process's.

How time grows with the number of stories n:

- embedding (most of the time): linear, one pass of the model over every
  story's ~550 word pieces (3 windows of 256);
- edit distance to the exemplars: linear, n x (story length x exemplar
  length / 64) with rapidfuzz's bit-parallel Levenshtein;
- PCA: linear in n (n x d^2, d = 384);
- diversity: the pairwise measures cost O(k^2) per setting of k stories:
  with 7 settings that is about n^2 / 14 pairs, quadratic in n, until a
  setting has more than ``pair_sampling_threshold`` (200) stories; above it a
  seeded sample of ``sampled_pairs`` (10,000) pairs per setting is used, and
  the growth is linear again. At 700 stories: 7 x 4,950 pairs, all of them;
  at 2,800: 7 x 10,000 sampled pairs instead of 7 x 79,800. The Vendi score
  decomposes the d x d Gram matrix when k > d, so it is O(k d^2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEMPERATURES = tuple(float(t) for t in np.round(np.linspace(0.001, 2.0, 7), 3))  # the paper's grid
TARGET_CHARS = 2500
WORDS = ("the a girl boy sea moon tree king queen robot dragon village forest path river city night day light "
         "storm ship letter keeper garden door window mountain voice song secret map clock star fire stone "
         "found walked whispered remembered built opened lost carried painted waited promised followed "
         "old small quiet bright strange golden broken hidden ancient gentle curious brave tired silver "
         "and but then because while when after before under over through into beyond").split()


def _paper_dir() -> Path:
    return Path(os.environ.get("HARNESS_PAPER_DIR", REPO.parent / "shared" / "paper"))


def _sentences() -> tuple[list[str], str]:
    folder = _paper_dir() / "survey_stories"
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if files:
        text = " ".join(f.read_text(encoding="utf-8").replace("<br>", " ") for f in files)
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
        return sentences, f"recombined sentences of the paper's {len(files)} survey stories"
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(8, 20))).capitalize() + "." for _ in range(2000)]
    return sentences, "random sentences from a built-in word list"


def synthetic_stories(n: int, seed: int = 0) -> tuple[list[str], str]:
    """n stories of about 2,500 characters, paragraphs of 3 to 5 sentences."""
    sentences, source = _sentences()
    rng = np.random.default_rng(seed)
    stories = []
    for _ in range(n):
        paragraphs, paragraph, length = [], [], 0
        while length < TARGET_CHARS:
            sentence = sentences[rng.integers(len(sentences))]
            paragraph.append(sentence)
            length += len(sentence) + 1
            if len(paragraph) >= rng.integers(3, 6):
                paragraphs.append(" ".join(paragraph))
                paragraph = []
        if paragraph:
            paragraphs.append(" ".join(paragraph))
        stories.append("\n\n".join(paragraphs))
    return stories, source


def write_run(folder: Path, n: int) -> Path:
    texts, _ = synthetic_stories(n)
    lines = []
    for index, text in enumerate(texts):
        temperature = TEMPERATURES[index % len(TEMPERATURES)]
        lines.append({"story_id": f"s{index}", "setting_id": f"T{temperature}",
                      "setting": {"temperature": temperature, "top_k": 50, "top_p": 1.0}, "sample_index": index,
                      "prompt_id": "paper", "prompt": "[INST]Write a story.[/INST]Here it is:\n\n", "text": text,
                      "token_logprobs": list(np.random.default_rng(index).uniform(-4, 0, 500))})
    path = folder / "stories.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_metrics(n: int) -> dict:
    """One cold run of the metrics stage (all but perplexity_scorer) on n stories."""
    from metrics.compute import compute_metrics
    from metrics.config import ComputeMetricsConfig, MetricName, MetricsConfig

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        stories = write_run(Path(folder), n)
        exemplar = Path(folder) / "exemplar.txt"
        exemplar.write_text(synthetic_stories(1, seed=12345)[0][0], encoding="utf-8")
        enabled = [name for name in MetricName if name != MetricName.perplexity_scorer]
        config = ComputeMetricsConfig(stories=str(stories), out_dir=str(Path(folder) / "out"), exemplar=str(exemplar),
                                      metrics=MetricsConfig(enabled=enabled, progress=False))
        start = time.perf_counter()
        paths = compute_metrics(config)
        seconds = time.perf_counter() - start
        sidecar = json.loads(paths["sidecar"].read_text())
        import pandas as pd

        diversity = pd.read_parquet(paths["diversity"])
    return {"stories": n, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "timing": sidecar["timing_s"],
            "pairs": int(diversity["n_pairs"].sum()), "sampled": bool(diversity["pairs_sampled"].any())}


def child_scorer(n: int) -> dict:
    """Re-scored perplexity of n stories, model loaded outside the clock."""
    from metrics.config import ScorerConfig
    from metrics.scorer import TransformersScorer

    texts, _ = synthetic_stories(n, seed=7)
    scorer = TransformersScorer(ScorerConfig())
    prompt = "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\nHere it is:\n\n"
    start = time.perf_counter()
    scores = scorer.score(texts, [prompt] * n, progress=False)
    seconds = time.perf_counter() - start
    tokens = sum(score.n_tokens for score in scores)
    return {"stories": n, "seconds": seconds, "tokens": tokens, "peak_rss_mb": _peak_rss_mb()}


def _run_child(kind: str, n: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if kind == "metrics":  # cold: an empty content cache
        env["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-cache-")
    result = subprocess.run([sys.executable, "-m", "benchmarks.metrics", "--child", kind, str(n)], cwd=REPO, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child {kind} {n} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 700, 2800])
    parser.add_argument("--scorer-stories", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        print(json.dumps(child_metrics(n) if kind == "metrics" else child_scorer(n)))
        return

    _, source = synthetic_stories(1)
    print(f"stories: {source}, ~{TARGET_CHARS} characters, over {len(TEMPERATURES)} temperatures")
    print(f"machine: {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")
    print()
    header = (f"{'stories':>8} {'seconds':>8} {'stories/s':>10} {'peak RSS MB':>12} "
              f"{'embed+sim s':>12} {'edit s':>7} {'pca s':>6} {'diversity s':>12} {'pairs':>8}")
    print("metrics (all but perplexity_scorer), cold process and cache")
    print(header)
    for n in args.sizes:
        row = _run_child("metrics", n)
        timing = row["timing"]
        pairs = f"{row['pairs']}{' (sampled)' if row['sampled'] else ''}"
        print(f"{n:>8} {row['seconds']:>8.1f} {n / row['seconds']:>10.1f} {row['peak_rss_mb']:>12.0f} "
              f"{timing.get('cos_sim', 0):>12.1f} {timing.get('edit_dist', 0):>7.1f} {timing.get('pca', 0):>6.2f} "
              f"{timing.get('diversity', 0):>12.1f} {pairs:>8}", flush=True)
    print()
    row = _run_child("scorer", args.scorer_stories)
    print("perplexity_scorer (embedded SmolLM2, transformers, float32, conditioned on the prompt)")
    print(f"{'stories':>8} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'stories/s':>10} {'peak RSS MB':>12}")
    print(f"{row['stories']:>8} {row['tokens']:>8} {row['seconds']:>8.1f} {row['tokens'] / row['seconds']:>9.0f} "
          f"{row['stories'] / row['seconds']:>10.2f} {row['peak_rss_mb']:>12.0f}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
