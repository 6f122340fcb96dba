"""``python -m analysis.judge stories=... exemplar=... out_dir=DIR [judge=...] [repeats=K] [human=RATINGS]``

Writes to DIR:

- ``judgments.jsonl``: every judgment as stored (raw answers of every attempt, seeds, exemplar
  position, judging order, prompt, scores, probability-weighted scores);
- ``judge_ratings.csv``: the long ratings table (``story_id, participant_id, novelty, typicality,
  cohesion, coherence`` plus rater_kind, judge, rubric, repeat, status ...) that
  ``python -m analysis.report run_dir=... ratings=DIR/judge_ratings.csv`` reads as it reads human
  ratings; failed judgments are rows with empty scores;
- ``judge_ratings_expected.csv``: the same with the probability-weighted scores, where the backend
  gave token log-probs;
- ``judge_answers.csv``: one row per attempt, its raw answer and why it was refused;
- with ``human=``: ``calibration.csv`` (and .md, .tex), one scatter figure per judge and score kind,
  and ``judge_report.md`` tying it all together;
- ``judge_config.yaml``: the resolved config (it names API key variables, never keys).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.criteria import CRITERION_NAMES
from analysis.judge import calibration
from analysis.judge.config import JudgeRunConfig, register_configs
from analysis.judge.run import JudgeOutcome, answers_frame, ratings_frame, run_judges
from analysis.ratings import load_ratings
from analysis.report import Report
from experiments.errors import HarnessInputError
from experiments.files import write_atomic
from experiments.paths import conf_path

log = logging.getLogger("analysis.judge")

RATINGS_FILE = "judge_ratings.csv"
EXPECTED_RATINGS_FILE = "judge_ratings_expected.csv"
ANSWERS_FILE = "judge_answers.csv"
CALIBRATION_NAME = "calibration"


def _outcome_rows(judges, outcomes: list[JudgeOutcome], records: list[dict]) -> pd.DataFrame:
    rows = []
    for judge, outcome in zip(judges, outcomes):
        mine = [record for record in records if record["judge"] == judge.name]
        rows.append({
            "judge": judge.name, "backend": judge.backend.name, "structured": judge.structured,
            "token_alternatives": judge.sampling.top_logprobs or 0,
            "judgments": len(mine), "ok": sum(r["status"] == "ok" for r in mine),
            "failed": sum(r["status"] == "failed" for r in mine),
            "with_expected": sum(bool(r.get("expected")) and any(
                (v or {}).get("expected") is not None for v in r["expected"].values()) for r in mine),
            "answers_refused": sum(1 for r in mine for a in r["attempts"] if a["error_kind"]),
            "made_now": outcome.stored, "already_stored": outcome.already,
            "unanswered_now": outcome.unanswered,
            "refusals_now": ", ".join(f"{kind} {count}" for kind, count in sorted(outcome.errors.items())) or "none",
        })
    return pd.DataFrame(rows)


def _interval(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return "undefined"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def printed_table(table: pd.DataFrame) -> str:
    """The calibration as the command prints it: one line per judge, score kind and criterion."""
    rows = [{"judge": row.judge, "score": row.score_kind, "criterion": row.criterion, "n": row.n_stories,
             "failed": row.n_failed, "spearman [CI]": _interval(row.spearman, row.spearman_ci_low, row.spearman_ci_high),
             "pearson": "undefined" if pd.isna(row.pearson) else f"{row.pearson:+.2f}", "bias": f"{row.bias:+.2f}",
             "alpha humans -> +judge": f"{row.alpha_humans:.2f} -> {row.alpha_with_judge:.2f}",
             "beta T humans [CI]": _interval(row.beta_humans, row.beta_humans_ci_low, row.beta_humans_ci_high),
             "beta T judge [CI]": _interval(row.beta_judge, row.beta_judge_ci_low, row.beta_judge_ci_high)}
            for row in table.itertuples()]
    return pd.DataFrame(rows).to_markdown(index=False)


def _calibration(report: Report, config: JudgeRunConfig, records: list[dict], stories: pd.DataFrame,
                 human: pd.DataFrame) -> None:
    judge = pd.concat([ratings_frame(records, kind).assign(score_kind=kind) for kind in ("sampled", "expected")],
                      ignore_index=True)
    judge = judge[judge["story_id"].isin(set(human["story_id"]))]
    # A score kind no judgment has (no token log-probs) is left out rather than reported as all-NaN rows.
    has_any = judge.groupby(["judge", "score_kind"])[list(CRITERION_NAMES)].transform("count").sum(axis=1) > 0
    judge = judge[has_any]
    if judge.empty:
        report.text("## Calibration against human ratings\n\nNo judgment of a story the humans rated has a score: "
                    "nothing to compare.")
        return
    temperature = stories.set_index("story_id")["temperature"].dropna()
    table = calibration.calibration_table(human, judge, CRITERION_NAMES,
                                          temperature=temperature if len(temperature) else None,
                                          confidence=config.confidence, n_resamples=config.bootstrap_resamples,
                                          seed=config.seed)
    report.text("## Calibration against human ratings\n\n"
                f"Human ratings: `{html.escape(str(config.human))}` ({len(human)} ratings of "
                f"{human['story_id'].nunique()} stories by {human['participant_id'].nunique()} participants).\n\n"
                + calibration.calibration_summary(table))
    print(printed_table(table) + "\n\n" + calibration.calibration_summary(table) + "\n", flush=True)
    report.table(table, CALIBRATION_NAME,
                 f"Per judge, score kind and criterion: Spearman and Pearson correlation of the judge's story mean "
                 f"(over repeats) with the humans' story mean, percentile bootstrap {config.confidence:.0%} CIs "
                 f"over stories ({config.bootstrap_resamples} resamples); bias = judge minus human; Krippendorff's "
                 "alpha (interval) and one-way ICCs of the humans alone and with the judge as one more rater; the "
                 "temperature slope from the humans' ratings (mixed model, random intercept per participant) and "
                 "from the judge's (judge_beta_model).")
    human_means = calibration.story_means(human, CRITERION_NAMES)
    for (name, kind), ratings in judge.groupby(["judge", "score_kind"]):
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{name}_{kind}")
        paths = calibration.calibration_scatter(human_means, calibration.story_means(ratings, CRITERION_NAMES),
                                                CRITERION_NAMES, report.out_dir / "figures" / f"calibration_{stem}",
                                                f"{name} ({kind})")
        report.figure(paths, f"{name}, {kind} scores: judge story mean against human story mean per criterion; "
                             "dashed = identity.")


def write_outputs(config: JudgeRunConfig, resolved_yaml: str) -> Path:
    from analysis.judge.stories import load_stories

    out_dir = Path(config.out_dir)
    stories = load_stories(config.stories)
    # Checked before any judgment is asked: a bad ratings file must not cost a run.
    human = (load_ratings(config.human, CRITERION_NAMES, known_story_ids=set(stories["story_id"]))
             if config.human else None)
    judges, outcomes, records, rubric = run_judges(config)
    write_atomic(out_dir / "judge_config.yaml", resolved_yaml)
    sampled = ratings_frame(records, "sampled")
    write_atomic(out_dir / RATINGS_FILE, sampled.to_csv(index=False))
    expected = ratings_frame(records, "expected")
    if expected[list(CRITERION_NAMES)].notna().any().any():
        write_atomic(out_dir / EXPECTED_RATINGS_FILE, expected.to_csv(index=False))
    write_atomic(out_dir / ANSWERS_FILE, answers_frame(records).to_csv(index=False))

    report = Report(out_dir, digits=3, tables_subdir="tables", name="judge_report.md")
    report.text(f"# Judge ratings\n\nStories: `{html.escape(config.stories)}`; exemplar: "
                f"`{html.escape(config.exemplar)}`; rubric `{rubric}`; {config.repeats} repeat(s) per story; at most "
                f"{config.max_attempts} attempt(s) per judgment. Ratings: [{RATINGS_FILE}]({RATINGS_FILE}).")
    summary = _outcome_rows(judges, outcomes, records)
    report.table(summary, "judgments",
                 "Judgments per judge: ok, failed (every attempt refused: stored, scores empty), with a "
                 "probability-weighted score; answers refused over all attempts; this run: made, already stored, "
                 "not answered by the server (asked again next run) and refusals by kind.")
    if human is not None:
        _calibration(report, config, records, stories, human)
    path = report.write()
    for row in summary.itertuples():
        log.info("%s: %d judgments (%d ok, %d failed), %d made now, %d already stored, %d unanswered",
                 row.judge, row.judgments, row.ok, row.failed, row.made_now, row.already_stored, row.unanswered_now)
    return path


register_configs()


@hydra.main(version_base="1.3", config_path=conf_path(), config_name="judge_run")
def main(cfg: DictConfig) -> None:
    try:
        config: JudgeRunConfig = OmegaConf.to_object(cfg)
        path = write_outputs(config, OmegaConf.to_yaml(cfg))
    except HarnessInputError as error:
        raise SystemExit(f"error: {error}") from None
    print(path)


if __name__ == "__main__":
    main()
