"""The analysis report of one run: tables, figures and ``report.md``.

``python -m analysis.report run_dir=PATH [ratings=FILE]`` writes PATH/report/
(tables/ as CSV + LaTeX + Markdown, figures/ as PNG + PDF, report.md showing
the config, the tables and the figures) and prints the report's path.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis import figures
from analysis.config import ReportConfig, register_configs
from analysis.correlations import correlation_table
from analysis.descriptives import criterion_summary, setting_summary
from analysis.mixed_models import mixed_models_table
from analysis.quality_diversity import (DIVERSITY_MEASURES, REFERENCE_FAMILY, QualityDiversityError,
                                        closest_settings, family_order, label_settings_by_family, load_embeddings,
                                        quality_diversity_points, quality_measures, setting_families)
from analysis.ratings import load_ratings
from analysis.reliability import reliability_table
from analysis.run_data import RunData, RunError, load_run
from experiments.paths import conf_path
from analysis.tables import TableFiles, markdown_table, write_table
from experiments.errors import HarnessInputError
from experiments.files import write_atomic

log = logging.getLogger(__name__)

BOXPLOT_METRICS = ("perplexity", "perplexity_scorer", "prototype_cos_sim", "prototype_edit_dist_norm")


def fenced_block(text: str, language: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside (the text may be anything)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


class Report:
    """Collects Markdown sections while tables and figures are written beside it."""

    def __init__(self, out_dir: Path, digits: int, tables_subdir: str = "tables", name: str = "report.md"):
        self.out_dir, self.digits, self.tables_subdir, self.name = out_dir, digits, tables_subdir, name
        self.parts: list[str] = []

    def text(self, markdown: str) -> None:
        self.parts.append(markdown)

    def table(self, table: pd.DataFrame, name: str, caption: str) -> TableFiles:
        files = write_table(table, self.out_dir / self.tables_subdir, name, caption, self.digits)
        prefix = f"{self.tables_subdir}/" if self.tables_subdir else ""
        self.parts.append(
            f"{markdown_table(table, self.digits)}\n\n*{html.escape(caption, quote=False)}* "
            f"([CSV]({prefix}{name}.csv), [LaTeX]({prefix}{name}.tex))"
        )
        return files

    def figure(self, paths: list[Path], caption: str) -> None:
        png, pdf = (path.relative_to(self.out_dir).as_posix() for path in paths)
        self.parts.append(f"![{html.escape(caption, quote=False)}]({png})\n\n*{html.escape(caption, quote=False)}* ([PDF]({pdf}))")

    def write(self) -> Path:
        path = self.out_dir / self.name
        write_atomic(path, "\n\n".join(self.parts) + "\n")
        return path


def _check_predictors(run: RunData, predictors: list[str]) -> None:
    """Refuse constant predictors before any figure or model, with the option that drops them."""
    for predictor in predictors:
        values = run.stories[predictor].dropna()
        if values.nunique() < 2:
            option = "exclude_parameters" if predictor in run.swept else "exclude_metrics"
            raise RunError(
                f"{run.run_dir}: predictor {predictor!r} has no variance (every value is {values.iloc[0]!r}); "
                f"drop it with {option}=[...,{predictor}]"
            )


def _configuration_section(report: Report, config: ReportConfig, run: RunData, by_family: bool = False) -> None:
    report.text("## Configuration")
    report.text("Report config:\n\n" + fenced_block(OmegaConf.to_yaml(OmegaConf.structured(config)), "yaml"))
    if run.job_configs:
        first_id, first = next(iter(run.job_configs.items()))
        swept = ", ".join(run.swept + (["sampler family"] if by_family else [])) or "nothing"
        report.text(f"Generation config of setting `{html.escape(first_id)}` (the {len(run.job_configs)} settings "
                    f"differ in: {html.escape(swept)}; each is in `jobs/<setting_id>/config.yaml`):\n\n"
                    + fenced_block(first, "yaml"))
    if run.manifest:
        report.text("Run manifest:\n\n" + fenced_block(run.manifest, "json"))


def _metric_sections(report: Report, run: RunData, config: ReportConfig, by_family: bool = False) -> None:
    stories, out = run.stories, report.out_dir / "figures"
    settings = (stories.groupby("setting_id", sort=False).size().rename("n_stories")
                .reindex(run.settings_order).reset_index())
    settings.insert(1, "setting", settings["setting_id"].map(run.setting_labels))
    report.text("## Settings")
    report.table(settings, "settings", "Settings of the run and the number of stories in each.")
    if not run.metrics:
        report.text("No metrics were found (metrics.parquet missing or empty).")
        return

    report.text("## Metrics per setting")
    summary = setting_summary(stories, run.metrics, label="setting_label")
    summary["order"] = summary["setting_id"].map({s: i for i, s in enumerate(run.settings_order)})
    summary = summary.sort_values(["metric", "order"]).drop(columns="order")
    report.table(summary, "setting_summary", "Per-setting mean, SD (ddof=1), median, range and n of each metric.")

    group_label = (figures.axis_label(run.swept[0]) if len(run.swept) == 1
                   else ", ".join(run.swept) if run.swept else "Setting")
    if by_family:  # the ticks are "<family>: <swept values>"
        group_label = f"Sampler family: {group_label}"
    ticks = [run.setting_ticks[s] for s in run.settings_order]
    for metric in (m for m in BOXPLOT_METRICS if m in run.metrics):
        paths = figures.boxplot_by_group(stories, metric, "setting_id", out / f"box_{metric}", group_label,
                                         order=run.settings_order, tick_labels=ticks)
        report.figure(paths, f"{figures.axis_label(metric)} per setting; box = IQR, line = median, "
                             "diamond = mean.")
    if {"pca_x", "pca_y"} <= set(stories.columns) and stories["pca_x"].notna().any():
        explained = (run.sidecar.get("pca") or {}).get("explained_variance_ratio") if isinstance(
            run.sidecar.get("pca"), dict) else None
        note = (f" PCs explain {explained[0]:.1%} and {explained[1]:.1%} of the variance."
                if explained and len(explained) >= 2 else "")
        paths = figures.pca_panels(stories, "setting_id", out / "pca_scatter", order=run.settings_order,
                                   titles=[run.setting_titles[s] for s in run.settings_order],
                                   exemplars=run.exemplar_points)
        report.figure(paths, "Story embeddings in the shared 2-D PCA, one panel per setting; red star = exemplar."
                      + note)
    if len(run.swept) == 2:
        for metric in run.metrics:
            paths = figures.metric_heatmap(stories, metric, run.swept[0], run.swept[1], out / f"heatmap_{metric}")
            report.figure(paths, f"Mean {figures.axis_label(metric)} over {run.swept[0]} x {run.swept[1]}.")
    elif len(run.swept) > 2:
        report.text(f"Heatmaps are drawn for two-parameter sweeps; this run sweeps {len(run.swept)}.")

    if run.swept:
        report.text("## Metrics and swept parameters")
        table = correlation_table(stories, run.swept, run.metrics, config.confidence, config.correction.value,
                                  source=str(run.run_dir))
        report.table(table, "correlations_parameters",
                     f"Correlation of each metric with each swept parameter over stories; "
                     f"{config.confidence:.0%} CIs by Fisher z; correction: {table['correction'].iloc[0]}.")
    if run.diversity is not None:
        report.text("## Diversity within settings")
        report.table(run.diversity, "diversity", "Diversity of each setting (from diversity.parquet).")


def _sampler_families(run: RunData) -> pd.DataFrame | None:
    """Each setting's sampler family, when the run has more than one (else None)."""
    try:
        families = setting_families(run)
    except QualityDiversityError as error:
        log.warning("settings not grouped by sampler family: %s", error)
        return None
    return families if families["family"].nunique() > 1 else None


def _quality_diversity_section(report: Report, run: RunData, families: pd.DataFrame, ratings: pd.DataFrame | None,
                               config: ReportConfig) -> None:
    names = family_order(families)
    report.text("## Quality and diversity per sampler family")
    report.text("A setting's family is the samplers it runs beyond temperature, and their order when it is not "
                f"the default: {html.escape(', '.join(names))}.")
    embeddings = load_embeddings(run.run_dir)
    if embeddings is None:
        report.text("The run has no embeddings.parquet, so no diversity can be measured per setting: run the "
                    "metrics stage with a family that embeds the stories (cos_sim, pca or diversity).")
        return
    quality = quality_measures(run, ratings, config.criteria)
    measures = [column for column in quality.columns if column != "story_id"]
    if not measures:
        report.text("No quality measure: metrics.parquet has no perplexity_scorer or perplexity, and no ratings "
                    "were given.")
        return
    points = quality_diversity_points(run.stories, embeddings, quality, families, config.bootstrap_resamples,
                                      config.bootstrap_seed, config.confidence)
    intervals = (f"{config.confidence:.0%} bootstrap intervals over the setting's stories "
                 f"({config.bootstrap_resamples} resamples, seed {config.bootstrap_seed}, percentile; "
                 "analysis/quality_diversity.py)")
    better = ("Better means a better frontier, not one lucky setting: more diversity at the same quality, "
              "i.e. a curve further right at the same height; for perplexity (log scale; lower = text the "
              "model finds more likely) lower at the same diversity, for ratings higher.")
    paths = figures.quality_diversity_curves(points, DIVERSITY_MEASURES, measures,
                                             report.out_dir / "figures" / "quality_diversity", names,
                                             reference=REFERENCE_FAMILY, scale=config.scale)
    report.figure(paths, f"Quality against diversity (Vendi score; mean pairwise cosine distance of the story "
                         f"embeddings), one curve per sampler family through its settings in order of temperature "
                         f"(the number by each point; temperature alone in black); bars = {intervals}. {better}")
    write_table(points, report.out_dir / report.tables_subdir, "quality_diversity",
                f"Diversity and mean quality of each setting, with {intervals}.", report.digits)
    report.text(f"Every point and its interval: [CSV]({report.tables_subdir}/quality_diversity.csv), "
                f"[LaTeX]({report.tables_subdir}/quality_diversity.tex).")
    if REFERENCE_FAMILY not in names:
        report.text("No setting uses temperature alone, so there is no reference curve for the table of closest "
                    "settings.")
        return
    for measure in measures:
        # The measures are in the table's name and caption: not a column of constants.
        table = closest_settings(points, "vendi_score", measure).drop(columns=["diversity_measure", "quality_measure"])
        report.table(table, f"quality_diversity_closest_{measure}",
                     f"For each setting of temperature alone (a diversity level: its Vendi score), each other "
                     f"family's setting with the closest Vendi score, with its mean {measure} beside temperature "
                     f"alone's at that level ({intervals}). A family does better at a level where its quality is "
                     f"better at the same diversity (perplexity lower, ratings higher); mind the gap between "
                     f"diversity and reference_diversity: the closest setting may still be far off.")


def _failed_judgments(ratings: pd.DataFrame, criteria: list[str]) -> str:
    """A sentence counting the judgments that failed (rows without scores): they stay in the table, unused."""
    failed = int(ratings["status"].astype(str).eq("failed").sum()) if "status" in ratings.columns \
        else int(ratings[criteria].isna().all(axis=1).sum())
    return (f" {failed} of {len(ratings)} judgments failed (no well-formed answer within the attempts): their rows "
            "have no scores and no model uses them." if failed else f" All {len(ratings)} judgments have scores.")


def rater_kind(ratings: pd.DataFrame) -> str:
    """"judge" when every row is an LLM judge's (column rater_kind, as analysis.judge writes it), "mixed"
    when some are, else "human"."""
    if "rater_kind" not in ratings.columns:
        return "human"
    judged = ratings["rater_kind"].astype(str).eq("judge")
    return "judge" if judged.all() else "mixed" if judged.any() else "human"


def _ratings_sections(report: Report, run: RunData, ratings: pd.DataFrame, config: ReportConfig) -> None:
    criteria, out = list(config.criteria), report.out_dir / "figures"
    predictors = run.swept + run.metrics
    kind = rater_kind(ratings)
    if kind == "judge":
        judges = sorted(ratings["judge"].dropna().astype(str).unique()) if "judge" in ratings.columns else []
        report.text("## Judge ratings\n\nThese ratings were made by LLM judges (`python -m analysis.judge`), not by "
                    "people" + (f": {html.escape(', '.join(judges))}" if judges else "") + ". Each repeat of a judge "
                    "counts as one rater (participant_id names judge, rubric and repeat); how far a judge can "
                    "stand in for people is in its calibration against human ratings, not here."
                    + _failed_judgments(ratings, criteria))
    elif kind == "mixed":
        report.text("## Human and judge ratings\n\nThe table mixes people's ratings with LLM judges' "
                    "(column rater_kind); each judge repeat counts as one rater.")
    else:
        report.text("## Human ratings")
    descriptives = criterion_summary(ratings, criteria).merge(
        reliability_table(ratings, criteria, confidence=config.confidence), on="criterion")
    report.table(descriptives, "ratings_descriptives",
                 "Mean and SD per criterion; Cronbach's alpha as the paper (stories as items, participants as "
                 "subjects, pairwise covariances); one-way ICC(1) and ICC(1,k) with stories as targets; "
                 "Krippendorff's alpha (interval).")
    paths = figures.rating_histograms(ratings, criteria, out / "rating_histograms", config.scale)
    report.figure(paths, "Distribution of the ratings; dashed line = mean.")

    joined = ratings.merge(run.stories[["story_id", "setting_id", *predictors]], on="story_id",
                           how="left", validate="many_to_one")
    if not predictors:
        report.text("The run has no swept parameter and no metric: no model to fit.")
        return
    models = mixed_models_table(joined, criteria, predictors, crossed=config.crossed_random_effects,
                                confidence=config.confidence, correction=config.correction.value,
                                progress=config.progress)
    random_part = "crossed random intercepts for participant and story" if config.crossed_random_effects \
        else "a random intercept per participant"
    report.text("### Mixed-effects models")
    report.table(models, "mixed_models",
                 f"criterion ~ predictor with {random_part} (statsmodels MixedLM, REML); Wald z tests; "
                 f"{config.confidence:.0%} CIs. R2 after Nakagawa & Schielzeth (fixed part X*beta only); "
                 f"*_paper = as the paper's helper: var of fitted values incl. random effects, cov_re, "
                 f"var of residuals (ddof=1). "
                 f"Correction: {models['correction'].iloc[0]}.")

    story_means = joined.groupby("story_id")[criteria].mean().reset_index().merge(
        run.stories[["story_id", *predictors]], on="story_id")
    table = correlation_table(story_means, predictors, criteria, config.confidence, config.correction.value,
                              source="story-level mean ratings")
    report.text("### Correlations with ratings")
    report.table(table, "correlations_ratings",
                 f"Correlation of each predictor with the per-story mean rating (n = rated stories, so rows are "
                 f"independent); correction: {table['correction'].iloc[0]}.")


def build_report(config: ReportConfig) -> Path:
    """Write the report of ``config.run_dir`` and return the path of report.md."""
    run = load_run(config.run_dir, config.exclude_parameters, config.exclude_metrics)
    ratings = None
    if config.ratings:
        ratings = load_ratings(config.ratings, config.criteria, config.scale, set(run.stories["story_id"]))
    _check_predictors(run, run.swept + run.metrics)
    families = _sampler_families(run)
    if families is not None:
        label_settings_by_family(run, families)

    out_dir = Path(config.out_dir)
    report = Report(out_dir, config.digits)
    report.text(f"# Analysis report\n\nRun: `{html.escape(str(run.run_dir))}`: {len(run.stories)} stories in "
                f"{len(run.settings_order)} settings; swept: {html.escape(', '.join(run.swept) or 'nothing')}; "
                f"metrics: {html.escape(', '.join(run.metrics) or 'none')}"
                + (f"; {'judge ' if rater_kind(ratings) == 'judge' else ''}ratings: "
                   f"`{html.escape(str(config.ratings))}` ({len(ratings)} rows)." if ratings is not None
                   else "; no human ratings."))
    _configuration_section(report, config, run, by_family=families is not None)
    _metric_sections(report, run, config, by_family=families is not None)
    if families is not None:
        _quality_diversity_section(report, run, families, ratings, config)
    if ratings is not None:
        _ratings_sections(report, run, ratings, config)
    return report.write()


def report_for_run(run_dir: str | Path, ratings: str | Path | None = None, **options) -> Path:
    """The report with default options, for Python callers that are not a Hydra app (tests, notebooks);
    the demo job runs the same report as ``python -m analysis.report run_dir=...``."""
    config = ReportConfig(run_dir=str(run_dir), ratings=str(ratings) if ratings else None,
                          out_dir=str(Path(run_dir) / "report"), **options)
    return build_report(config)


register_configs()


@hydra.main(version_base="1.3", config_path=conf_path(), config_name="report")
def main(cfg: DictConfig) -> None:
    config: ReportConfig = OmegaConf.to_object(cfg)
    try:
        path = build_report(config)
    except HarnessInputError as error:  # any bad input: run, ratings, metrics files
        raise SystemExit(f"error: {error}") from None
    print(path)


if __name__ == "__main__":
    main()
