import random

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from metrics.config import EditUnit
from metrics.edit_distance import (as_symbol_strings, distance_matrix, normalised_edit_distance, paired_distances,
                                   unit_sequences)


def _one(a: str, b: str, unit: EditUnit, token_ids=None) -> float:
    left, right = unit_sequences([a, b], unit, token_ids)
    return normalised_edit_distance(left, right)


def test_characters_by_hand():
    # kitten -> sitting: 2 substitutions + 1 insertion = 3, longer length 7
    assert _one("kitten", "sitting", EditUnit.char) == pytest.approx(3 / 7)
    assert _one("abc", "abc", EditUnit.char) == 0.0
    assert _one("abc", "xyz", EditUnit.char) == 1.0


def test_words_by_hand():
    # one inserted word of four
    assert _one("the cat sat", "the cat sat down", EditUnit.word) == pytest.approx(1 / 4)
    # [The, cat, sat, .] vs [A, cat, sat, .]: one substitution of four tokens
    assert _one("The cat sat.", "A cat sat.", EditUnit.word) == pytest.approx(1 / 4)
    # whitespace does not count, words do: "a b" vs "a  \n b" are equal
    assert _one("a b", "a  \n b", EditUnit.word) == 0.0
    # "the dog" -> "dog the": 2 substitutions of 2
    assert _one("the dog", "dog the", EditUnit.word) == 1.0


def test_model_tokens_by_hand():
    vocabulary = {"a": [1], "b": [2, 3], "c": [4]}

    def token_ids(text):
        return [t for word in text.split() for t in vocabulary[word]]

    # [1, 2, 3, 4] vs [1, 4]: two deletions of four tokens
    assert _one("a b c", "a c", EditUnit.token, token_ids) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        unit_sequences(["a"], EditUnit.token)


def test_empty_sequences():
    assert normalised_edit_distance("", "") == 0.0
    assert normalised_edit_distance("", "ab") == 1.0
    assert _one("", "two words", EditUnit.word) == 1.0


def test_symbol_strings_keep_the_distance():
    rng = random.Random(0)
    lists = [[rng.choice(["x", "y", "z", 7, 8, ("t",)]) for _ in range(rng.randint(0, 40))] for _ in range(30)]
    strings = as_symbol_strings(lists)
    for i in range(0, 30, 2):
        assert normalised_edit_distance(strings[i], strings[i + 1]) == pytest.approx(
            Levenshtein.normalized_distance(lists[i], lists[i + 1]))


def test_symbol_strings_skip_surrogates():
    (text,) = as_symbol_strings([list(range(60000))])
    assert len(set(text)) == 60000
    assert not any(0xD800 <= ord(c) < 0xE000 for c in text)
    text.encode("utf-8")  # a surrogate would fail here


def test_matrix_and_pairs():
    queries = ["kitten", "abc"]
    choices = ["sitting", "abc", ""]
    matrix = distance_matrix(queries, choices)
    assert matrix == pytest.approx(np.array([[3 / 7, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    assert paired_distances(["kitten", "abc"], ["sitting", "abd"]) == pytest.approx([3 / 7, 1 / 3])
    assert distance_matrix([], ["a"]).shape == (0, 1)
