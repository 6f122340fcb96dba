"""The metric families, in the order their columns appear in ``metrics.parquet``.

Adding a family: write its module (pure functions plus a ``measure(context)``),
add a name to ``metrics.config.MetricName`` and its ``FAMILY`` here.
"""

from __future__ import annotations

from metrics import edit_distance, perplexity, projection, scorer, similarity
from metrics.config import MetricName
from metrics.context import StoryFamily

STORY_FAMILIES: dict[MetricName, StoryFamily] = {
    family.name: family
    for family in (perplexity.FAMILY, scorer.FAMILY, similarity.FAMILY, edit_distance.FAMILY, projection.FAMILY)
}

# Measured per setting rather than per story (diversity.parquet).
SETTING_FAMILIES: frozenset[MetricName] = frozenset({MetricName.diversity})

assert set(STORY_FAMILIES) | SETTING_FAMILIES == set(MetricName), "every MetricName needs a family"
