"""Reproduce the human-evaluation analysis of Peeperkorn et al. (ICCC 2024) from its released data.

``python -m analysis.reproduce_paper paper_dir=../shared/paper out_dir=PATH`` writes

- ``descriptives.csv``: criterion, mean, sd, cronbach_alpha (the paper's Table 1 layout);
- ``lme.csv``: criterion, predictor, beta, se, p, r2_conditional, r2_marginal,
  r2_conditional_paper, r2_marginal_paper (the paper's Table 2 layout), for
  temperature and for the measures our metrics stage computes on the survey
  stories against the exemplar;
- ``comparison_temperature.csv``: per criterion the published beta, SE and R^2
  beside ours, paper-style and Nakagawa (:mod:`analysis.paper_published`);
- ``comparison_edit_distance.csv``: the published beta (SE) of normalised edit
  distance beside the one re-measured on the survey stories, in word and in
  character units;
- the same in LaTeX and Markdown, full tables (CIs, ICC, Krippendorff's alpha,
  variance components) beside them, the re-measured story metrics, the figures
  the data allow, and ``reproduction.md`` linking everything.

The 700 generated stories were not released, so perplexity and the 2-D PCA
of the paper's Figure 1-3 cannot be rebuilt; only the 31 rated stories can be
re-measured, and with our embedding model rather than Llama 2 70B.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import replace
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis import figures, paper_published
from analysis.config import AnalysisInputError, ReproducePaperConfig, register_configs
from analysis.descriptives import criterion_summary
from analysis.mixed_models import mixed_models_table
from analysis.ratings import load_ratings
from analysis.reliability import reliability_table
from analysis.report import Report, fenced_block
from analysis.run_data import exemplar_points
from experiments.paths import conf_path
from experiments.errors import HarnessInputError
from experiments.files import write_atomic
from metrics.config import EditUnit, MetricName, MetricsConfig

log = logging.getLogger(__name__)

RATINGS_FILE = "survey_data_by_evaluation.csv.tar.gz"
DESCRIPTIVES_COLUMNS = ["criterion", "mean", "sd", "cronbach_alpha"]
LME_COLUMNS = ["criterion", "predictor", "beta", "se", "p", "r2_conditional", "r2_marginal",
               "r2_conditional_paper", "r2_marginal_paper"]
EDIT_PREDICTOR = "prototype_edit_dist_norm"
# The paper did not say in which unit it counted edits, so the comparison tries both that need no model.
COMPARED_EDIT_UNITS = (EditUnit.word, EditUnit.char)
# A value equal to the published one at 3 decimals counts as reproduced (the notebook's LaTeX table has 2).
REPRODUCED_TOLERANCE = 1e-3


class PaperDataError(AnalysisInputError):
    """The paper folder is missing a file or its files disagree."""


def survey_stories(paper_dir: Path) -> pd.DataFrame:
    """The rated survey stories (practice stories left out): story_id, temperature, text.

    The released texts use ``<br>`` for line breaks; they become newlines, as the participants saw them.
    """
    folder = paper_dir / "survey_stories"
    metadata_path = folder / "metadata.csv"
    if not metadata_path.exists():
        raise PaperDataError(f"{metadata_path}: not found (expected the paper's survey_stories/metadata.csv)")
    metadata = pd.read_csv(metadata_path, index_col=0, dtype={"id": str})
    rated = metadata[metadata["type"] == "evaluation"]
    rows = []
    for story in rated.itertuples():
        path = folder / f"{story.id}.txt"
        if not path.exists():
            raise PaperDataError(f"{path}: story text listed in {metadata_path} is missing")
        text = path.read_text(encoding="utf-8").replace("<br>", "\n").strip()
        rows.append({"story_id": story.id, "temperature": float(story.t), "text": text})
    return pd.DataFrame(rows)


def exemplar_text(paper_dir: Path) -> str:
    path = paper_dir / "exemplar.txt"
    if not path.exists():
        raise PaperDataError(f"{path}: not found (the exemplar story of the paper)")
    return path.read_text(encoding="utf-8").strip()


def load_paper_ratings(paper_dir: Path, config: ReproducePaperConfig, stories: pd.DataFrame) -> pd.DataFrame:
    """The long ratings, validated against the survey stories and their temperatures."""
    ratings = load_ratings(paper_dir / RATINGS_FILE, config.criteria, config.scale, set(stories["story_id"]))
    ratings["temperature"] = pd.to_numeric(ratings["temperature"])
    expected = ratings["story_id"].map(stories.set_index("story_id")["temperature"])
    mismatch = ratings.index[(expected - ratings["temperature"]).abs() > 1e-9]
    if len(mismatch):
        row = ratings.loc[mismatch[0]]
        raise PaperDataError(f"{paper_dir / RATINGS_FILE}: story {row['story_id']!r} has temperature "
                             f"{row['temperature']} but metadata.csv says {expected[mismatch[0]]}")
    return ratings


def _metrics_stage():
    """metrics.compute.compute_story_metrics, imported late: a checkout may lack the metrics stage."""
    try:
        from metrics.compute import compute_story_metrics
    except ImportError as error:
        raise PaperDataError(f"the metrics stage is not available ({error}); run with remeasure=false "
                             "for temperature only") from None
    return compute_story_metrics


def remeasure_stories(stories: pd.DataFrame, exemplar: str, predictors: list[str],
                      metrics_config: MetricsConfig) -> tuple[pd.DataFrame, dict]:
    """Run the metrics stage on the survey stories against the exemplar; return (metrics, sidecar)."""
    metrics, sidecar = _metrics_stage()(stories[["story_id", "text"]], [exemplar], metrics_config)
    missing = [p for p in predictors if p not in metrics.columns]
    if missing:
        raise PaperDataError(f"metrics.compute did not return {missing} (got {list(metrics.columns)})")
    metrics["story_id"] = metrics["story_id"].astype(str)
    return metrics, sidecar


def edit_distance_by_unit(stories: pd.DataFrame, exemplar: str, metrics_config: MetricsConfig) -> pd.DataFrame:
    """story_id, temperature and ``prototype_edit_dist_norm_<unit>`` per compared unit, by the metrics stage.

    Only the edit-distance family runs (no model is loaded); everything else is as in ``metrics_config``.
    """
    compute = _metrics_stage()
    frame = stories[["story_id", "temperature"]].copy()
    for unit in COMPARED_EDIT_UNITS:
        config = replace(metrics_config, enabled=[MetricName.edit_dist], progress=False,
                         edit_distance=replace(metrics_config.edit_distance, unit=unit))
        measured, _ = compute(stories[["story_id", "text"]], [exemplar], config)
        column = measured.set_index(measured["story_id"].astype(str))[EDIT_PREDICTOR]
        frame[f"{EDIT_PREDICTOR}_{unit.value}"] = frame["story_id"].map(column)
    return frame


def _fit(models: pd.DataFrame, criterion: str, predictor: str) -> pd.Series | None:
    """The model row of (criterion, predictor); None when it was not fitted (a criterion left out)."""
    rows = models[(models["criterion"] == criterion) & (models["predictor"] == predictor)]
    return rows.iloc[0] if len(rows) else None


def temperature_comparison(models: pd.DataFrame) -> pd.DataFrame:
    """Per criterion: the published beta, SE and R^2 beside ours, R^2 paper-style and Nakagawa.

    ``models`` must be the paper's model (random intercept per participant), else nothing should match.
    """
    rows = []
    for criterion, published in paper_published.TEMPERATURE_MODELS.items():
        ours = _fit(models, criterion, "temperature")
        if ours is None:
            continue
        rows.append({
            "criterion": criterion,
            "beta_published": published.beta, "beta": ours["beta"],
            "se_published": published.se, "se": ours["se"],
            "r2c_published": published.r2_conditional, "r2c_paper_style": ours["r2_conditional_paper"],
            "r2c_nakagawa": ours["r2_conditional"],
            "r2m_published": published.r2_marginal, "r2m_paper_style": ours["r2_marginal_paper"],
            "r2m_nakagawa": ours["r2_marginal"],
        })
    return pd.DataFrame(rows)


def edit_distance_comparison(models: pd.DataFrame) -> pd.DataFrame:
    """Per criterion: the published beta and SE of normalised edit distance beside ours in each compared unit."""
    rows = []
    for criterion, published in paper_published.EDIT_DISTANCE_MODELS.items():
        fits = {unit.value: _fit(models, criterion, f"{EDIT_PREDICTOR}_{unit.value}") for unit in COMPARED_EDIT_UNITS}
        if any(fit is None for fit in fits.values()):
            continue
        row = {"criterion": criterion, "beta_published": published.beta, "se_published": published.se}
        for unit, fit in fits.items():
            row[f"beta_{unit}"], row[f"se_{unit}"] = fit["beta"], fit["se"]
        rows.append(row)
    return pd.DataFrame(rows)


def beta_gaps(comparison: pd.DataFrame) -> dict[str, float]:
    """Mean |beta - published beta| over the criteria, per compared unit (smaller = closer to the paper)."""
    return {unit.value: float((comparison[f"beta_{unit.value}"] - comparison["beta_published"]).abs().mean())
            for unit in COMPARED_EDIT_UNITS}


def edit_distance_note(by_unit: pd.DataFrame, comparison: pd.DataFrame) -> str:
    """Why the re-measured edit-distance betas differ from the paper's, with the numbers of this run."""
    greedy = by_unit.loc[by_unit["temperature"].idxmin()]
    distances = ", ".join(f"{greedy[f'{EDIT_PREDICTOR}_{unit.value}']:.3f} in {unit.value} units"
                          for unit in COMPARED_EDIT_UNITS)
    gaps = beta_gaps(comparison)
    closest = min(gaps, key=gaps.get)
    return (f"Why they differ: the paper measured the generated texts of its unreleased story table against "
            f"its own copy of the prototype, with code it did not release (edit unit, normalisation and text "
            f"clean-up unknown), while here the released survey texts (`<br>` read as a line break) are "
            f"measured against exemplar.txt, transcribed from the supplementary material (the "
            f"T = {greedy['temperature']:g} survey story {greedy['story_id']} is at distance {distances} from "
            f"it), so the predictor differs, not the model. Closest to the published betas: {closest} units "
            f"(mean |beta difference| over the criteria: "
            + ", ".join(f"{unit} {gap:.3f}" for unit, gap in gaps.items()) + ").")


def temperature_note(comparison: pd.DataFrame) -> str:
    """How far the paper-style R^2 (and beta, SE) are from the published ones, and what Nakagawa's are."""
    gap = max((comparison[ours] - comparison[published]).abs().max() for ours, published in
              [("beta", "beta_published"), ("se", "se_published"), ("r2c_paper_style", "r2c_published"),
               ("r2m_paper_style", "r2m_published")])
    verdict = ("reproduce" if gap <= REPRODUCED_TOLERANCE else "do not reproduce") + \
        f" the published beta, SE and R^2 (largest difference {gap:.1e})"
    return (f"The paper-style columns {verdict}. They are not Nakagawa's R^2: the paper's helper took var_f "
            "from the fitted values, which include each participant's predicted intercept, so participant "
            "variance is counted twice, and var_e from the residuals left after those intercepts instead of "
            "the model's residual variance. The r2*_nakagawa columns are the correct values.")


def report_comparison(report: Report, ratings: pd.DataFrame, criteria: list[str],
                      edit_units: pd.DataFrame | None) -> None:
    """The published numbers beside ours, always from the paper's model (participant intercept only)."""
    report.text("## Comparison with the publication\n\n"
                f"Published values: {paper_published.SOURCE}. Our fits use the paper's model "
                "(criterion ~ predictor, random intercept per participant, REML) whatever the config says.")
    temperature = mixed_models_table(ratings, criteria, ["temperature"])
    comparison = temperature_comparison(temperature)
    report.table(comparison, "comparison_temperature",
                 "criterion ~ temperature: published beta, SE and R^2 (the paper's helper) beside ours; "
                 "r2*_paper_style = the paper's helper on our fit, r2*_nakagawa = Nakagawa & Schielzeth.")
    report.text(temperature_note(comparison))
    if edit_units is None:
        report.text("Normalised edit distance: not re-measured (remeasure=false), so not compared.")
        return
    units = [f"{EDIT_PREDICTOR}_{unit.value}" for unit in COMPARED_EDIT_UNITS]
    data = ratings.merge(edit_units.drop(columns="temperature"), on="story_id", how="left")
    edit = edit_distance_comparison(mixed_models_table(data, criteria, units))
    report.table(edit, "comparison_edit_distance",
                 "criterion ~ normalised edit distance to the prototype: published beta and SE beside ours, "
                 "re-measured on the 31 survey stories against exemplar.txt in word units (words and "
                 "punctuation marks) and in character units.")
    report.text(edit_distance_note(edit_units, edit))


def reproduce(config: ReproducePaperConfig) -> Path:
    """Write every output into ``config.out_dir``; return the path of reproduction.md."""
    paper_dir, out_dir = Path(config.paper_dir), Path(config.out_dir)
    stories = survey_stories(paper_dir)
    exemplar = exemplar_text(paper_dir)
    ratings = load_paper_ratings(paper_dir, config, stories)
    criteria = list(config.criteria)

    predictors = ["temperature"]
    story_metrics = stories[["story_id", "temperature"]].copy()
    sidecar: dict = {}
    edit_units = None
    if config.remeasure:
        measured, sidecar = remeasure_stories(stories, exemplar, list(config.metric_predictors), config.metrics)
        story_metrics = story_metrics.merge(measured, on="story_id", how="left", validate="one_to_one")
        predictors += list(config.metric_predictors)
        edit_units = edit_distance_by_unit(stories, exemplar, config.metrics)
    data = ratings.merge(story_metrics.drop(columns="temperature"), on="story_id", how="left")

    reliability = reliability_table(ratings, criteria, confidence=config.confidence)
    descriptives = criterion_summary(ratings, criteria).merge(reliability, on="criterion")
    models = mixed_models_table(data, criteria, predictors, crossed=config.crossed_random_effects,
                                confidence=config.confidence, correction=config.correction.value,
                                progress=config.progress)

    report = Report(out_dir, config.digits, tables_subdir="", name="reproduction.md")
    report.text("# Reproduction of Peeperkorn et al. (ICCC 2024), human evaluation\n\n"
                f"Data: `{html.escape(str(paper_dir))}`: {len(ratings)} ratings by "
                f"{ratings['participant_id'].nunique()} participants of {ratings['story_id'].nunique()} stories.")
    report.text("Config:\n\n" + fenced_block(OmegaConf.to_yaml(OmegaConf.structured(config)), "yaml"))
    report.text("## Descriptive statistics and reliability")
    report.table(descriptives[DESCRIPTIVES_COLUMNS], "descriptives",
                 "Mean, SD (ddof=1) and Cronbach's alpha per criterion (stories as items, participants as "
                 "subjects, pairwise covariances, as the paper).")
    report.table(descriptives, "descriptives_full",
                 "As above with n, median, the alpha CI (Feldt), one-way ICC(1)/ICC(1,k) with stories as "
                 "targets, and Krippendorff's alpha (interval).")
    report.text("## Linear mixed-effects models")
    random_part = "crossed random intercepts (participant, story)" if config.crossed_random_effects \
        else "a random intercept per participant"
    report.table(models[LME_COLUMNS], "lme",
                 f"criterion ~ predictor with {random_part}, REML. r2_* after Nakagawa & Schielzeth "
                 "(fixed-effect variance from X*beta); r2_*_paper as the paper's helper (variances of the fitted "
                 "values, which include the random effects, and of the residuals).")
    report.table(models, "lme_full", f"All columns: Wald z, {config.confidence:.0%} CI, variance components, "
                                     f"convergence; correction: {models['correction'].iloc[0]}.")
    report.table(story_metrics, "story_metrics",
                 "The rated stories with temperature and the re-measured metrics (against exemplar.txt).")
    if sidecar:
        write_atomic(out_dir / "story_metrics.json", json.dumps(sidecar, indent=2, default=str))
    report_comparison(report, ratings, criteria, edit_units)

    report.text("## Figures")
    figure_dir = out_dir / "figures"
    report.figure(figures.rating_histograms(ratings, criteria, figure_dir / "rating_histograms", config.scale),
                  "Distribution of the ratings; dashed line = mean.")
    temperatures = sorted(ratings["temperature"].unique())
    ticks = [f"{t:g}" for t in temperatures]
    for criterion in criteria:
        paths = figures.boxplot_by_group(ratings, criterion, "temperature", figure_dir / f"box_{criterion}",
                                         "Temperature", order=temperatures, tick_labels=ticks,
                                         value_label=figures.axis_label(criterion, config.scale))
        report.figure(paths, f"{criterion.capitalize()} ratings per temperature; diamond = mean.")
    for metric in config.metric_predictors if config.remeasure else []:
        paths = figures.boxplot_by_group(story_metrics, metric, "temperature", figure_dir / f"box_{metric}",
                                         "Temperature", order=temperatures, tick_labels=ticks)
        report.figure(paths, f"{figures.axis_label(metric)} of the rated stories per temperature "
                             "(5 stories per temperature, 1 at 0.001).")
    if {"pca_x", "pca_y"} <= set(story_metrics.columns):
        paths = figures.pca_panels(story_metrics, "temperature", figure_dir / "pca_scatter", order=temperatures,
                                   titles=[f"T = {t:g}" for t in temperatures], exemplars=exemplar_points(sidecar))
        report.figure(paths, "Rated stories and the exemplar (red star) in a 2-D PCA of their embeddings, "
                             "one panel per temperature.")
    return report.write()


register_configs()


@hydra.main(version_base="1.3", config_path=conf_path(), config_name="reproduce_paper")
def main(cfg: DictConfig) -> None:
    config: ReproducePaperConfig = OmegaConf.to_object(cfg)
    try:
        path = reproduce(config)
    except HarnessInputError as error:  # any bad input: paper folder, ratings, the metrics stage
        raise SystemExit(f"error: {error}") from None
    out_dir = Path(config.out_dir)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(pd.read_csv(out_dir / "descriptives.csv").to_string(index=False))
        print()
        print(pd.read_csv(out_dir / "lme.csv").to_string(index=False))
        for name in ("comparison_temperature", "comparison_edit_distance"):
            if (out_dir / f"{name}.csv").exists():
                print(f"\n{name} (published beside ours)")
                print(pd.read_csv(out_dir / f"{name}.csv").to_string(index=False))
    print(path)


if __name__ == "__main__":
    main()
