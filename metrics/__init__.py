"""The metrics stage: per-story measures (perplexity, similarity and edit
distance to exemplars, a shared PCA) and diversity per setting.

Entry points: ``python -m metrics.compute`` and
``metrics.compute.compute_story_metrics``. One module per metric family
(``perplexity``, ``scorer``, ``similarity``, ``edit_distance``,
``projection``, ``diversity``), each declaring one ``FAMILY``, listed in
``metrics.registry.MODULES`` (whose docstring says what a new family touches).
"""
