import math

import numpy as np
import pytest

from metrics.config import DiversityConfig
from metrics.diversity import (all_pairs, choose_pairs, compression_ratio, distinct_n, mean_pairwise_cosine_distance,
                               unrank_pairs, vendi_score)


def test_vendi_of_identical_vectors_is_one():
    assert vendi_score(np.tile([0.3, -1.0, 2.0], (5, 1))) == pytest.approx(1.0)  # n > d
    assert vendi_score(np.tile(np.arange(1.0, 11.0), (4, 1))) == pytest.approx(1.0)  # n < d


def test_vendi_of_orthogonal_vectors_is_n():
    assert vendi_score(np.eye(4)) == pytest.approx(4.0)
    assert vendi_score(3.0 * np.eye(10)[:6]) == pytest.approx(6.0)  # scale does not matter


def test_vendi_of_two_vectors_by_hand():
    # K = [[1, c], [c, 1]], eigenvalues of K/2: (1 + c)/2 and (1 - c)/2; c = cos 60 deg = 0.5
    c = 0.5
    lam = np.array([(1 + c) / 2, (1 - c) / 2])
    expected = math.exp(-np.sum(lam * np.log(lam)))
    vectors = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert vendi_score(vectors) == pytest.approx(expected)
    assert vendi_score(np.vstack([vectors, vectors, vectors])) == pytest.approx(expected)  # n > d path
    assert math.isnan(vendi_score(np.zeros((0, 3))))


def test_distinct_n_by_hand():
    tokens = [["a", "b", "a", "b"]]
    assert distinct_n(tokens, 1) == pytest.approx(2 / 4)
    assert distinct_n(tokens, 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(tokens, 3) == pytest.approx(2 / 2)  # aba, bab
    # pooled over texts, n-grams never cross a text boundary: [x y], [y x] -> bigrams xy, yx
    assert distinct_n([["x", "y"], ["y", "x"]], 2) == pytest.approx(1.0)
    assert distinct_n([["x", "y"], ["x", "y"]], 2) == pytest.approx(1 / 2)
    assert math.isnan(distinct_n([["one"]], 2))
    assert math.isnan(distinct_n([], 1))


def test_compression_ratio_by_hand():
    # gzip of b"a": 10-byte header + deflate (fixed Huffman: 3 + 8 + 7 bits = 3 bytes) + 8-byte trailer
    assert compression_ratio(["a"]) == pytest.approx(1 / 21)
    # texts are joined by a newline: "ab\ncd" is 5 bytes, deflated as 5 literals:
    # 3 + 5 * 8 + 7 = 50 bits = 7 bytes; with header and trailer 25 bytes
    assert compression_ratio(["ab", "cd"]) == pytest.approx(5 / 25)
    assert math.isnan(compression_ratio([""]))
    # redundancy compresses: a repeated story gives a higher ratio than varied text
    story = "Once upon a time a girl found a path in the woods. "
    assert compression_ratio([story] * 20) > compression_ratio([story])


def test_mean_pairwise_cosine_distance_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    first, second = all_pairs(3)
    # 1 - cos: (0,1): 1, (0,2): 1 - 1/sqrt2, (1,2): 1 - 1/sqrt2
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert mean_pairwise_cosine_distance(vectors, first, second) == pytest.approx(expected)
    assert math.isnan(mean_pairwise_cosine_distance(vectors, np.array([], int), np.array([], int)))


def test_unranking_matches_all_pairs():
    for n in (2, 3, 7, 50, 1001):
        first, second = all_pairs(n)
        got_first, got_second = unrank_pairs(n, np.arange(n * (n - 1) // 2))
        assert np.array_equal(first, got_first) and np.array_equal(second, got_second)


def test_pairs_are_sampled_above_the_threshold_with_a_seed():
    config = DiversityConfig(pair_sampling_threshold=10, sampled_pairs=20, seed=3)
    first, second, sampled = choose_pairs(10, config, "s")
    assert not sampled and len(first) == 45
    first, second, sampled = choose_pairs(30, config, "s")
    assert sampled and len(first) == 20
    assert (first < second).all() and second.max() < 30
    assert len(set(zip(first.tolist(), second.tolist()))) == 20  # distinct pairs
    again = choose_pairs(30, config, "s")
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    other = choose_pairs(30, config, "another setting")
    assert not (np.array_equal(first, other[0]) and np.array_equal(second, other[1]))
    # more pairs asked for than exist: all of them, not sampled
    assert choose_pairs(12, DiversityConfig(pair_sampling_threshold=10, sampled_pairs=1000), "s")[2] is False
