"""Linear mixed-effects models of ratings, one per (criterion, predictor), with R^2.

Model: ``criterion ~ 1 + predictor`` with a random intercept per participant
(statsmodels MixedLM, REML, as the paper), or optionally crossed random
intercepts for participant and story (variance components on one group).

R^2 (Nakagawa & Schielzeth 2013, random-intercept models):

- var_f: variance of the fixed-effect prediction X @ beta (fixed part only),
- var_r: the random-intercept variance(s) (participant, plus story if crossed),
- var_e: the residual variance, the model's ``scale``;
- marginal = var_f / (var_f + var_r + var_e), conditional = (var_f + var_r) / (same).

Variances of predictions use ddof=1, as R's ``var`` in MuMIn::r.squaredGLMM.

The ``*_paper`` columns repeat the paper's helper (``r2_lme`` in its notebook),
which reproduces the published R^2 exactly. It took all three variances from
the fitted model: var_f = var(fitted values), var_r = the random-intercept
variance, var_e = var(residuals) (pandas ``.var()``, ddof=1). In statsmodels a
mixed model's fitted values include the predicted random effects (BLUPs) and
its residuals are y minus those, so the participant variance is counted in
var_f *and* in var_r, and var_e is the spread left after the BLUPs, usually
smaller than the model's residual variance (its ``scale``). Both R^2 come out
inflated; they are reported only to compare with the publication.
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from analysis.multiple_comparisons import adjust_p_values
from analysis.ratings import check_predictor_variance

log = logging.getLogger(__name__)

# Above this many ratings a crossed fit takes minutes (measured: ~3 min at 2100 ratings, 800 levels).
CROSSED_SLOW_ROWS = 1000

MIXED_MODEL_COLUMNS = [
    "criterion", "predictor", "random_effects", "n_obs", "n_participants", "n_stories",
    "beta", "se", "z", "p", "ci_low", "ci_high",
    "r2_marginal", "r2_conditional", "r2_marginal_paper", "r2_conditional_paper",
    "var_fixed", "var_fixed_paper", "var_participant", "var_story", "var_residual", "var_residual_paper",
    "converged", "warnings",
]


def nakagawa_r2(var_fixed: float, var_random: float, var_residual: float) -> tuple[float, float]:
    """(marginal, conditional) R^2 from the three variance components."""
    total = var_fixed + var_random + var_residual
    return var_fixed / total, (var_fixed + var_random) / total


def paper_variances(fitted: np.ndarray, residuals: np.ndarray) -> tuple[float, float]:
    """(var_f, var_e) as the paper's helper: sample variances (ddof=1, pandas' default) of the
    conditional fitted values and residuals, both of which include the predicted random effects."""
    return float(np.var(fitted, ddof=1)), float(np.var(residuals, ddof=1))


def fit_mixed_model(
    data: pd.DataFrame,
    criterion: str,
    predictor: str,
    participant: str = "participant_id",
    story: str = "story_id",
    crossed: bool = False,
    confidence: float = 0.95,
) -> dict:
    """Fit one model and return one row of :data:`MIXED_MODEL_COLUMNS` (without correction columns)."""
    columns = [criterion, predictor, participant] + ([story] if story in data.columns else [])
    frame = data[columns].dropna(subset=[criterion, predictor]).copy()
    check_predictor_variance(frame, predictor, source=f"mixed model of {criterion!r}")
    n_stories = frame[story].nunique() if story in frame.columns else float("nan")
    # Plain names so that any column name (dashes, spaces) is safe in the formula.
    frame = frame.rename(columns={criterion: "y", predictor: "x", participant: "participant"})
    frame["x"] = frame["x"].astype(float)
    frame["participant"] = frame["participant"].astype(str)
    if crossed:
        if story not in data.columns:
            raise ValueError(f"crossed random effects need a {story!r} column")
        frame = frame.rename(columns={story: "story"})
        frame["story"] = frame["story"].astype(str)
        frame["all"] = 1  # one group: the two factors are crossed, not nested
        # statsmodels handles crossed factors as variance components of that single group; each
        # likelihood evaluation works on the whole data set, so this is slow past ~1000 ratings.
        model = smf.mixedlm("y ~ x", frame, groups="all", re_formula="0",
                            vc_formula={"participant": "0 + C(participant)", "story": "0 + C(story)"})
    else:
        model = smf.mixedlm("y ~ x", frame, groups="participant")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=True)
    messages = sorted({str(w.message).splitlines()[0] for w in caught})

    if crossed:
        components = dict(zip(result.model.exog_vc.names, np.asarray(result.vcomp, dtype=float)))
        var_participant, var_story = float(components["participant"]), float(components["story"])
        var_random = var_participant + var_story
    else:
        var_participant, var_story = float(result.cov_re.iloc[0, 0]), float("nan")
        var_random = var_participant
    var_residual = float(result.scale)
    fixed_prediction = result.model.exog @ result.fe_params.to_numpy()
    var_fixed = float(np.var(fixed_prediction, ddof=1))
    var_fixed_paper, var_residual_paper = paper_variances(np.asarray(result.fittedvalues),
                                                          np.asarray(result.resid))
    r2_marginal, r2_conditional = nakagawa_r2(var_fixed, var_random, var_residual)
    # Same formula, the paper's variances: this reproduces its published R^2 (analysis.paper_published).
    r2_marginal_paper, r2_conditional_paper = nakagawa_r2(var_fixed_paper, var_random, var_residual_paper)
    ci_low, ci_high = result.conf_int(alpha=1 - confidence).loc["x"]
    return {
        "criterion": criterion, "predictor": predictor,
        "random_effects": "participant + story (crossed)" if crossed else "participant",
        "n_obs": int(result.nobs), "n_participants": frame["participant"].nunique(),
        "n_stories": n_stories,
        "beta": float(result.fe_params["x"]), "se": float(result.bse_fe["x"]),
        "z": float(result.tvalues["x"]), "p": float(result.pvalues["x"]),
        "ci_low": float(ci_low), "ci_high": float(ci_high),
        "r2_marginal": r2_marginal, "r2_conditional": r2_conditional,
        "r2_marginal_paper": r2_marginal_paper, "r2_conditional_paper": r2_conditional_paper,
        "var_fixed": var_fixed, "var_fixed_paper": var_fixed_paper,
        "var_participant": var_participant, "var_story": var_story, "var_residual": var_residual,
        "var_residual_paper": var_residual_paper,
        "converged": bool(result.converged), "warnings": "; ".join(messages),
    }


def mixed_models_table(
    data: pd.DataFrame,
    criteria: Sequence[str],
    predictors: Sequence[str],
    participant: str = "participant_id",
    story: str = "story_id",
    crossed: bool = False,
    confidence: float = 0.95,
    correction: str = "none",
    progress: bool = False,
) -> pd.DataFrame:
    """One model per (criterion, predictor); predictors are checked for variance before any fit."""
    for predictor in predictors:
        check_predictor_variance(data, predictor, source="ratings joined with the run")
    pairs = [(c, p) for c in criteria for p in predictors]
    if crossed and len(data) > CROSSED_SLOW_ROWS:
        log.warning("crossed random intercepts on %d ratings: statsmodels fits them as variance components of "
                    "one group over the whole data set, about minutes per model; %d models to fit",
                    len(data), len(pairs))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="mixed models", unit="model")
    rows = [fit_mixed_model(data, c, p, participant, story, crossed, confidence) for c, p in pairs]
    table = pd.DataFrame(rows, columns=MIXED_MODEL_COLUMNS)
    return adjust_p_values(table, correction)
