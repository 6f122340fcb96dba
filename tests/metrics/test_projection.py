import numpy as np
import pytest

from metrics.projection import fit_pca_2d


def test_pca_by_hand():
    # variance along x: (4 + 4) / 3, along y: (1 + 1) / 3 -> ratios 0.8 and 0.2
    points = np.array([[2.0, 0.0, 5.0], [-2.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, -1.0, 5.0]])
    projection = fit_pca_2d(points)
    assert projection.explained_variance_ratio == pytest.approx([0.8, 0.2])
    assert projection.components == pytest.approx(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), abs=1e-12)
    assert projection.coordinates == pytest.approx(np.array([[2, 0], [-2, 0], [0, 1], [0, -1]]), abs=1e-12)


def test_pca_signs_are_fixed():
    # whichever way the data points, the largest loading of each component is positive
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 6)) * [5, 3, 1, 1, 1, 1]
    for sign in (1.0, -1.0):
        components = fit_pca_2d(sign * data).components
        largest = np.argmax(np.abs(components), axis=1)
        assert (components[[0, 1], largest] > 0).all()


def test_pca_is_deterministic_and_does_not_depend_on_row_order():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(50, 16))
    first = fit_pca_2d(data)
    second = fit_pca_2d(data.copy())
    assert np.array_equal(first.coordinates, second.coordinates)
    order = rng.permutation(50)
    shuffled = fit_pca_2d(data[order])
    assert shuffled.coordinates == pytest.approx(first.coordinates[order], abs=1e-9)
    assert shuffled.explained_variance_ratio == pytest.approx(first.explained_variance_ratio)


def test_pca_needs_two_rows():
    with pytest.raises(ValueError):
        fit_pca_2d(np.ones((1, 4)))
