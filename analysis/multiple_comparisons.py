"""Optional multiple-comparison correction of a results table, stated in the table itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

# Names as statsmodels spells them; "none" keeps the raw p-values.
CORRECTIONS = {
    "none": "none",
    "holm": "Holm (family-wise error)",
    "fdr_bh": "Benjamini-Hochberg (false discovery rate)",
    "bonferroni": "Bonferroni (family-wise error)",
}


def adjust_p_values(table: pd.DataFrame, method: str, p_column: str = "p") -> pd.DataFrame:
    """Add ``p_adjusted`` and ``correction`` columns; the family is every row with a p-value."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction={method!r} is not allowed; choose one of {', '.join(CORRECTIONS)}")
    table = table.copy()
    table["p_adjusted"] = table[p_column]
    family = table[p_column].notna().to_numpy()
    if method != "none" and family.any():
        table.loc[family, "p_adjusted"] = multipletests(table.loc[family, p_column].to_numpy(), method=method)[1]
    table["correction"] = f"{CORRECTIONS[method]}, family of {int(np.sum(family))} tests" if method != "none" else "none"
    return table
