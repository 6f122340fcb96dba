"""The published mixed-model results of Peeperkorn et al. (ICCC 2024), to compare the reproduction with.

Source: the paper's own analysis notebook, ``analysis.ipynb`` of
github.com/maxpeeperkorn/creativity-parameter (commit b4a5a4e1fea0a35157c7e4add35fb70c5a5b1c1e,
cell 9, the printed ``df_lme``), run by the authors on the released
``survey_data_by_evaluation.csv.tar.gz`` with
``smf.mixedlm("criterion ~ predictor", data, groups="participant_id").fit()``.
The values are as the notebook prints them (6 decimals); the notebook writes
them to its LaTeX table rounded to 2 decimals. R^2 is the notebook's helper
``r2_lme`` (see :func:`analysis.mixed_models.paper_variances`), not Nakagawa's.

Only the temperature and normalised-edit-distance models are kept: the
perplexity and cosine-similarity predictors came from Llama 2 70B and the
unreleased story table, so nothing here can be compared with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SOURCE = ("Peeperkorn et al. (ICCC 2024), analysis.ipynb cell 9 output in "
          "github.com/maxpeeperkorn/creativity-parameter @ b4a5a4e")


@dataclass(frozen=True)
class PublishedModel:
    beta: float
    se: float
    r2_conditional: Optional[float] = None  # the paper's r2_lme, not Nakagawa's
    r2_marginal: Optional[float] = None


# criterion ~ temperature, random intercept per participant.
TEMPERATURE_MODELS: dict[str, PublishedModel] = {
    "novelty": PublishedModel(0.307792, 0.137565, 0.384855, 0.152371),
    "typicality": PublishedModel(-0.095365, 0.117867, 0.338767, 0.124552),
    "cohesion": PublishedModel(-0.181029, 0.111942, 0.406430, 0.161481),
    "coherence": PublishedModel(0.240212, 0.122124, 0.645610, 0.283003),
}

# criterion ~ prototype_edit_dist_norm (the paper's normalised edit distance to the prototype story).
EDIT_DISTANCE_MODELS: dict[str, PublishedModel] = {
    "novelty": PublishedModel(2.009219, 0.730681),
    "typicality": PublishedModel(-0.661668, 0.631638),
    "cohesion": PublishedModel(-0.663004, 0.608445),
    "coherence": PublishedModel(0.749570, 0.663524),
}
