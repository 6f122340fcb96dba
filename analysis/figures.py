"""The paper's figures, sized for one column (3.3 in) and saved as PNG and PDF.

Built on ``matplotlib.figure.Figure`` (the object API, rendered by Agg), so no
pyplot state or GUI backend is ever touched, and figures are freed when dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.criteria import SCALE
from experiments.files import atomic_path

COLUMN_WIDTH_IN = 3.3
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6, "ytick.labelsize": 6,
         "legend.fontsize": 6}

# Axis labels with units; a metric not listed falls back to its column name.
METRIC_LABELS = {
    "perplexity": "Perplexity (exp mean NLL)",
    "perplexity_scorer": "Scorer perplexity (exp NLL)",
    "prototype_cos_sim": "Cos. sim. to exemplar [-1, 1]",
    "prototype_edit_dist_norm": "Norm. edit distance [0, 1]",
    "exemplar_cos_sim_max": "Max cos. sim., exemplars",
    "exemplar_cos_sim_mean": "Mean cos. sim., exemplars",
    "exemplar_edit_dist_norm_max": "Max norm. edit dist. [0, 1]",
    "exemplar_edit_dist_norm_mean": "Mean norm. edit dist. [0, 1]",
    "temperature": "Temperature",
    "top_p": "Top-p (nucleus mass)",
    "top_k": "Top-k (tokens)",
    "min_p": "Min-p (share of top prob.)",
    "vendi_score": "Vendi score (effective no. of stories)",
    "mean_pairwise_cos_dist": "Mean pairwise cos. distance",
    "mean_entropy_before": "Mean entropy before sampling (nats)",
    "mean_entropy_after": "Mean entropy after sampling (nats)",
    "mean_entropy_cut": "Mean entropy cut by sampling (nats)",
    "mean_candidates_kept": "Mean candidates kept (tokens)",
}


def axis_label(name: str, scale: tuple[float, float] | None = None) -> str:
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    if scale is not None:
        return f"{name.capitalize()} rating ({scale[0]:g} to {scale[1]:g})"
    return name.replace("_", " ")


def _figure(rows: int = 1, columns: int = 1, height_in: float = 2.4, width_in: float = COLUMN_WIDTH_IN):
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def save_figure(figure: Figure, out_base: str | Path, dpi: int = 300) -> list[Path]:
    """Write ``<out_base>.png`` and ``.pdf``, each to a temporary file first, then renamed."""
    out_base = Path(out_base)
    written = []
    for extension in ("png", "pdf"):
        target = out_base.with_name(f"{out_base.name}.{extension}")
        with atomic_path(target) as temporary:
            figure.savefig(temporary, format=extension, dpi=dpi)
        written.append(target)
    return written


def _with_style(function):
    """Run a plotting function inside the paper-size rc context (fonts apply at draw time too)."""
    from functools import wraps

    from matplotlib import rc_context

    @wraps(function)
    def wrapped(*args, **kwargs):
        with rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapped


@_with_style
def boxplot_by_group(
    data: pd.DataFrame,
    value: str,
    group: str,
    out_base: str | Path,
    group_label: str,
    order: Sequence | None = None,
    tick_labels: Sequence[str] | None = None,
    value_label: str | None = None,
) -> list[Path]:
    """One box per group (median line, IQR box, 1.5 IQR whiskers), the mean marked by a white diamond."""
    order = list(order) if order is not None else sorted(data[group].dropna().unique())
    samples = [pd.to_numeric(data.loc[data[group] == key, value], errors="coerce").dropna().to_numpy()
               for key in order]
    figure, axes = _figure(height_in=2.5)
    ax = axes[0, 0]
    ax.boxplot(samples, tick_labels=list(tick_labels) if tick_labels is not None else [str(k) for k in order],
               showmeans=True, widths=0.6, flierprops={"markersize": 2},
               meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 3},
               medianprops={"color": "tab:orange"})
    ax.set_xlabel(group_label)
    ax.set_ylabel(value_label or axis_label(value))
    if len(order) > 6 or max((len(str(t)) for t in (tick_labels or order)), default=0) > 6:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_title("diamond = mean", loc="right", fontsize=5)
    return save_figure(figure, out_base)


@_with_style
def pca_panels(
    data: pd.DataFrame,
    group: str,
    out_base: str | Path,
    order: Sequence | None = None,
    titles: Sequence[str] | None = None,
    exemplars: Sequence[tuple[float, float]] = (),
    x: str = "pca_x",
    y: str = "pca_y",
) -> list[Path]:
    """The shared 2-D PCA of story embeddings, one panel per setting, same axes; exemplar(s) as a red star."""
    order = list(order) if order is not None else sorted(data[group].dropna().unique())
    columns = min(3, len(order))
    rows = math.ceil(len(order) / columns)
    figure, axes = _figure(rows, columns, height_in=1.15 * rows + 0.5)
    x_all = np.concatenate([data[x].to_numpy(float), [p[0] for p in exemplars]])
    y_all = np.concatenate([data[y].to_numpy(float), [p[1] for p in exemplars]])
    pad_x, pad_y = 0.05 * np.ptp(x_all[np.isfinite(x_all)]), 0.05 * np.ptp(y_all[np.isfinite(y_all)])
    for index, ax in enumerate(axes.flat):
        if index >= len(order):
            ax.set_visible(False)
            continue
        part = data[data[group] == order[index]]
        ax.scatter(part[x], part[y], s=3, alpha=0.6, linewidths=0, color="tab:blue")
        for point in exemplars:
            ax.scatter([point[0]], [point[1]], marker="*", s=40, color="tab:red", edgecolors="black",
                       linewidths=0.3, zorder=3)
        ax.set_xlim(np.nanmin(x_all) - pad_x, np.nanmax(x_all) + pad_x)
        ax.set_ylim(np.nanmin(y_all) - pad_y, np.nanmax(y_all) + pad_y)
        ax.set_title(titles[index] if titles is not None else str(order[index]))
        if index % columns == 0:
            ax.set_ylabel("PC 2 (a.u.)")
        if index // columns == rows - 1 or index + columns >= len(order):
            ax.set_xlabel("PC 1 (a.u.)")
    if exemplars:
        figure.suptitle("red star = exemplar", fontsize=6)
    return save_figure(figure, out_base)


@_with_style
def rating_histograms(
    ratings: pd.DataFrame, criteria: Sequence[str], out_base: str | Path, scale: tuple[float, float] = SCALE,
    bins: int = 16,
) -> list[Path]:
    """One histogram per criterion over the declared scale, mean as a dashed line."""
    columns = 2
    rows = math.ceil(len(criteria) / columns)
    figure, axes = _figure(rows, columns, height_in=1.3 * rows + 0.3)
    edges = np.linspace(scale[0], scale[1], bins + 1)
    for index, ax in enumerate(axes.flat):
        if index >= len(criteria):
            ax.set_visible(False)
            continue
        values = ratings[criteria[index]].dropna()
        ax.hist(values, bins=edges, color="tab:blue", edgecolor="white", linewidth=0.3)
        ax.axvline(values.mean(), color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel(axis_label(criteria[index], scale))
        ax.set_ylabel("Ratings (count)")
        ax.set_xlim(*scale)
    return save_figure(figure, out_base)


@_with_style
def metric_heatmap(
    data: pd.DataFrame, metric: str, row_parameter: str, column_parameter: str, out_base: str | Path
) -> list[Path]:
    """Mean of a metric over a two-parameter grid, each cell annotated with its value."""
    grid = data.pivot_table(index=row_parameter, columns=column_parameter, values=metric, aggfunc="mean")
    grid = grid.sort_index().sort_index(axis=1)
    figure, axes = _figure(height_in=2.6)
    ax = axes[0, 0]
    image = ax.imshow(grid.to_numpy(float), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in grid.index])
    ax.set_xlabel(axis_label(column_parameter))
    ax.set_ylabel(axis_label(row_parameter))
    values = grid.to_numpy(float)
    low, high = np.nanmin(values), np.nanmax(values)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):  # dark text on the bright (upper) half of viridis
            bright = high > low and (value - low) / (high - low) > 0.55
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=5,
                    color="black" if bright else "white")
    bar = figure.colorbar(image, ax=ax)
    bar.set_label(f"Mean {axis_label(metric)}", fontsize=6)
    return save_figure(figure, out_base)


@_with_style
def quality_diversity_curves(
    points: pd.DataFrame,
    diversity_measures: Sequence[str],
    quality_measures: Sequence[str],
    out_base: str | Path,
    families: Sequence[str],
    reference: str = "temperature",
    scale: tuple[float, float] | None = None,
    log_quality: Sequence[str] = ("perplexity", "perplexity_scorer"),
) -> list[Path]:
    """One panel per quality measure (rows) and diversity measure (columns): each family a curve through
    its settings in order of temperature (each point labelled with it), bars = the points' intervals;
    ``reference`` in black. ``points`` is ``analysis.quality_diversity.quality_diversity_points``'s table."""
    rows, columns = len(quality_measures), len(diversity_measures)
    figure, axes = _figure(rows, columns, height_in=1.9 * rows + 0.5, width_in=2 * COLUMN_WIDTH_IN)
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                    "tab:olive", "tab:cyan", "tab:gray"])
    colour = {family: "black" if family == reference else next(colours, "tab:gray") for family in families}
    for i, quality in enumerate(quality_measures):
        for j, diversity in enumerate(diversity_measures):
            ax = axes[i, j]
            for family in families:
                x = points[(points["family"] == family) & (points["measure"] == diversity)].set_index("setting_id")
                y = points[(points["family"] == family) & (points["measure"] == quality)].set_index("setting_id")
                both = x.join(y[["value", "ci_low", "ci_high"]], rsuffix="_y", how="inner").sort_values("temperature")
                both = both[np.isfinite(both["value"]) & np.isfinite(both["value_y"])]
                if both.empty:
                    continue
                xerr = np.abs(np.vstack([both["value"] - both["ci_low"], both["ci_high"] - both["value"]]))
                yerr = np.abs(np.vstack([both["value_y"] - both["ci_low_y"], both["ci_high_y"] - both["value_y"]]))
                ax.errorbar(both["value"], both["value_y"], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr),
                            color=colour[family], marker="o", markersize=2.5, linewidth=0.9, elinewidth=0.5,
                            capsize=1.5, label=family, zorder=3 if family == reference else 2)
                for point in both.itertuples():
                    ax.annotate(f"{point.temperature:g}", (point.value, point.value_y), xytext=(2, 2),
                                textcoords="offset points", fontsize=4.5, color=colour[family])
            if quality in log_quality:
                ax.set_yscale("log")
            ax.set_xlabel(axis_label(diversity))
            ax.set_ylabel(axis_label(quality, None if quality in METRIC_LABELS else scale))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 3), frameon=False)
    return save_figure(figure, out_base)
