"""One shared 2-D PCA of the embeddings of all stories and exemplars (``pca_x``, ``pca_y``).

Fitting one projection on the whole run plus the exemplars puts every
setting (and the exemplars) in the same plane, so they can be compared.
PCA leaves each axis's sign arbitrary; we fix it (the loading of largest
magnitude of each component is positive), so the same embeddings always give
the same picture, whatever the library version or the order of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from metrics.config import MetricName
from metrics.context import MeasureContext, MetricFamily, Need


@dataclass(frozen=True)
class Projection:
    coordinates: np.ndarray  # (n, 2)
    components: np.ndarray  # (2, d)
    mean: np.ndarray  # (d,)
    explained_variance_ratio: np.ndarray  # (2,)


def fit_pca_2d(vectors: np.ndarray) -> Projection:
    """Project rows onto the first two principal components: x = (v - mean(v)) . c_k.

    Needs at least 2 rows and 2 columns. Signs fixed: for each component the
    entry of largest absolute value is positive.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"PCA needs at least 2 rows and 2 columns, got shape {vectors.shape}")
    # One BLAS thread: the matrix is small, and on a busy machine spinning BLAS
    # threads made this SVD ten times slower (measured: 0.2 s vs 2 s for 2,800 x 384).
    with threadpool_limits(limits=1, user_api="blas"):
        pca = PCA(n_components=2, svd_solver="full").fit(vectors)
    components = pca.components_.copy()
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(2), largest])
    signs[signs == 0] = 1.0
    components *= signs[:, None]
    coordinates = (vectors - pca.mean_) @ components.T
    return Projection(coordinates=coordinates, components=components, mean=pca.mean_,
                      explained_variance_ratio=pca.explained_variance_ratio_.copy())


def measure(context: MeasureContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n = context.n
    columns = {"pca_x": np.full(n, np.nan), "pca_y": np.full(n, np.nan)}
    info: dict[str, Any] = {
        "pca_x": {"formula": "(e(story) - mean) . c1, c1 the first principal component of the shared PCA"},
        "pca_y": {"formula": "(e(story) - mean) . c2, c2 the second principal component of the shared PCA"},
        "pca": {
            "fitted_on": "all stories with an embedding plus all exemplars",
            "sign_convention": "the largest-magnitude loading of each component is positive",
        },
    }
    vectors = np.vstack([context.story_embeddings, context.exemplar_embeddings])
    usable = np.isfinite(vectors).all(axis=1)
    for i in np.flatnonzero(~usable[:n]):
        for name in columns:
            context.nan_log.nan(name, [int(i)], context.embedding_nan_reason(int(i)))
    if usable.sum() < 2:
        reason = f"PCA needs at least 2 embedded texts (stories + exemplars), got {int(usable.sum())}"
        for name in columns:
            context.nan_log.nan(name, np.flatnonzero(usable[:n]).tolist(), reason)
        info["pca"]["skipped"] = reason
        return columns, info
    projection = fit_pca_2d(vectors[usable])
    coordinates = np.full((len(vectors), 2), np.nan)
    coordinates[usable] = projection.coordinates
    columns["pca_x"], columns["pca_y"] = coordinates[:n, 0], coordinates[:n, 1]
    info["pca"].update({
        "n_stories": int(usable[:n].sum()),
        "n_exemplars": int(usable[n:].sum()),
        "explained_variance_ratio": [float(v) for v in projection.explained_variance_ratio],
        "exemplar_coordinates": {
            exemplar.exemplar_id: ([float(v) for v in coordinates[n + j]] if usable[n + j] else None)
            for j, exemplar in enumerate(context.exemplars)},
    })
    context.exemplar_values["pca"] = info["pca"]["exemplar_coordinates"]
    return columns, info


# The exemplars join the fit (none is fine); each exemplar's coordinates go into exemplars.json.
FAMILY = MetricFamily(name=MetricName.pca, level="story", needs=frozenset({Need.embedding, Need.exemplars}),
                      compute=measure, exemplar_fields=("pca",))
