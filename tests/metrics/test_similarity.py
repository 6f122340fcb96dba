import math

import numpy as np
import pytest

from metrics.similarity import cosine_similarity, cosine_similarity_matrix


def test_cosine_similarity_by_hand():
    assert cosine_similarity([1, 0], [0, 1]) == 0.0
    assert cosine_similarity([1, 1], [1, 0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine_similarity([2, 0, 0], [5, 0, 0]) == pytest.approx(1.0)
    assert cosine_similarity([1, 2], [-1, -2]) == pytest.approx(-1.0)
    # 3-4-5: (3*4 + 4*3) / (5 * 5) = 24 / 25
    assert cosine_similarity([3, 4], [4, 3]) == pytest.approx(0.96)


def test_cosine_similarity_of_nothing_is_nan():
    assert math.isnan(cosine_similarity([0, 0], [1, 0]))
    assert math.isnan(cosine_similarity([np.nan, 0], [1, 0]))


def test_cosine_similarity_matrix():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [4.0, 3.0]])
    matrix = cosine_similarity_matrix(a, b)
    assert matrix[:2] == pytest.approx(np.array([[0.0, 0.8], [0.8, 0.96]]))
    assert np.isnan(matrix[2]).all()
