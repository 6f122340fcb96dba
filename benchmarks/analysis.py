"""Time the analysis report on a synthetic run of 700 stories (7 temperatures x 100) with ratings.

    python -m benchmarks.analysis [--participants 100] [--ratings-per-story 3]

(as a module from the repository root: run as a script, this file would shadow the analysis package).

Prints one row per stage: wall-clock seconds (best of --repeat) and what it processed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.config import ReportConfig
from analysis.correlations import correlation_table
from analysis.criteria import CRITERION_NAMES
from analysis.mixed_models import mixed_models_table
from analysis.ratings import load_ratings
from analysis.reliability import reliability_table
from analysis.report import build_report
from analysis.run_data import load_run
from analysis.synthetic import build_synthetic_run

TEMPERATURES = tuple(np.round(np.linspace(0.001, 2.0, 7), 3))  # the paper's grid


def _best(function, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--ratings-per-story", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as folder:
        run_dir = Path(folder) / "run"
        rows = []
        seconds, paths = _best(lambda: build_synthetic_run(
            run_dir, temperatures=TEMPERATURES, stories_per_setting=100, n_participants=args.participants,
            ratings_per_story=args.ratings_per_story), 1)
        rows.append(("write synthetic run", seconds, "700 stories + ratings"))
        seconds, run = _best(lambda: load_run(run_dir), args.repeat)
        rows.append(("load run", seconds, f"{len(run.stories)} stories, {len(run.metrics)} metrics"))
        seconds, ratings = _best(lambda: load_ratings(paths["ratings"], known_story_ids=set(run.stories["story_id"])),
                                 args.repeat)
        rows.append(("load + validate ratings", seconds, f"{len(ratings)} ratings"))
        predictors = run.swept + run.metrics
        joined = ratings.merge(run.stories[["story_id", *predictors]], on="story_id")
        seconds, _ = _best(lambda: correlation_table(run.stories, run.swept, run.metrics), args.repeat)
        rows.append(("correlations, metrics x parameters", seconds, f"{2 * len(run.metrics)} tests"))
        criteria = list(CRITERION_NAMES)
        seconds, _ = _best(lambda: reliability_table(ratings, criteria), args.repeat)
        rows.append(("reliability (alpha, ICC, Krippendorff)", seconds, f"{len(criteria)} criteria"))
        seconds, _ = _best(lambda: mixed_models_table(joined, criteria, predictors), args.repeat)
        rows.append(("mixed models, participant intercept", seconds, f"{len(criteria) * len(predictors)} fits"))
        # Crossed intercepts are fitted on the whole data set at once (one statsmodels group): one fit only.
        seconds, _ = _best(lambda: mixed_models_table(joined, criteria[:1], ["temperature"], crossed=True), 1)
        rows.append(("mixed model, crossed intercepts", seconds, "1 fit"))
        config = ReportConfig(run_dir=str(run_dir), ratings=str(paths["ratings"]), out_dir=str(run_dir / "report"),
                              progress=False)
        seconds, report = _best(lambda: build_report(config), args.repeat)
        figures = len(list((run_dir / "report" / "figures").glob("*.png")))
        rows.append(("full report (tables + figures + report.md)", seconds, f"{figures} figures"))

    table = pd.DataFrame(rows, columns=["stage", "seconds", "processed"])
    print(table.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
