"""A judge's answer is read strictly, and its score tokens give G-Eval's expected score."""

from __future__ import annotations

import math

import pytest

from analysis.criteria import CRITERION_NAMES
from analysis.judge.answers import (AnswerError, ParsedAnswer, answer_schema, expected_score, expected_scores,
                                    parse_answer, score_token_alternatives)

COMPACT = '{"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5}'
PRETTY = '{\n  "novelty": 3,\n  "typicality": 4,\n  "cohesion": 2,\n  "coherence": 5\n}'
SCORES = {"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5}


def _refused(text: str, kind: str) -> AnswerError:
    with pytest.raises(AnswerError) as caught:
        parse_answer(text)
    assert caught.value.kind == kind, str(caught.value)
    return caught.value


def _with(novelty: str) -> str:
    return '{"novelty": ' + novelty + ', "typicality": 4, "cohesion": 2, "coherence": 5}'


# --- the schema ---------------------------------------------------------------------------------------------

def test_schema_has_one_enum_integer_per_criterion_in_order():
    schema = answer_schema()
    assert schema["type"] == "object"
    assert list(schema["properties"]) == list(CRITERION_NAMES)
    assert all(p == {"type": "integer", "enum": [1, 2, 3, 4, 5]} for p in schema["properties"].values())
    assert schema["required"] == list(CRITERION_NAMES)
    assert schema["additionalProperties"] is False


def test_schema_follows_the_criteria_and_scale_given():
    schema = answer_schema(("b", "a"), (0, 2))
    assert schema["properties"] == {"b": {"type": "integer", "enum": [0, 1, 2]},
                                    "a": {"type": "integer", "enum": [0, 1, 2]}}
    assert schema["required"] == ["b", "a"]


# --- valid answers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [COMPACT, PRETTY, "  " + COMPACT + "\n"])
def test_a_bare_object_is_read(text):
    parsed = parse_answer(text)
    assert parsed.scores == SCORES
    assert list(parsed.scores) == list(CRITERION_NAMES)
    assert text[slice(*parsed.json_span)] in (COMPACT, PRETTY)
    assert parsed.extra_text is False
    assert parsed.text == text
    for name, offset in parsed.score_offsets.items():
        assert text[offset] == str(SCORES[name])


def test_keys_in_another_order_are_read_in_criteria_order():
    parsed = parse_answer('{"coherence": 5, "cohesion": 2, "typicality": 4, "novelty": 3}')
    assert list(parsed.scores) == list(CRITERION_NAMES)
    assert parsed.scores == SCORES


@pytest.mark.parametrize("text", [
    "```json\n" + COMPACT + "\n```",
    "Here are my scores: " + COMPACT + " Hope this helps",
    "Here are my scores:\n" + PRETTY,
    COMPACT + "\nThe story is fine.",
])
def test_text_around_the_object_is_allowed_and_flagged(text):
    parsed = parse_answer(text)
    assert parsed.scores == SCORES
    assert parsed.extra_text is True
    start, end = parsed.json_span
    assert text[start] == "{" and text[end - 1] == "}"
    assert {name: text[offset] for name, offset in parsed.score_offsets.items()} == {
        name: str(score) for name, score in SCORES.items()}


def test_offsets_follow_escaped_keys_and_multi_digit_scores():
    text = 'Scores: {"a": 10, "b" :\t7}'
    parsed = parse_answer(text, criteria=("a", "b"), scale=(1, 10))
    assert parsed.scores == {"a": 10, "b": 7}
    assert text[parsed.score_offsets["a"]:parsed.score_offsets["a"] + 2] == "10"
    assert text[parsed.score_offsets["b"]] == "7"
    escaped = '{"\\u0061": 2}'  # "a" written with an escape
    assert parse_answer(escaped, criteria=("a",)).score_offsets == {"a": escaped.index("2")}


# --- refused answers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n", "I would rate it 3, 4, 2 and 5."])
def test_no_object(text):
    _refused(text, "no_json")


@pytest.mark.parametrize("text", [
    '{"novelty": 3,',
    "{'novelty': 3, 'typicality': 4, 'cohesion': 2, 'coherence': 5}",  # Python, not JSON
    '{"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5,}',  # trailing comma
    'Scores {see below}: ' + COMPACT,  # a brace opening no JSON beside the object
    '{"answer": ' + COMPACT,  # the valid inner object of a truncated outer one
])
def test_malformed_json(text):
    _refused(text, "invalid_json")


def test_two_objects_are_refused():
    error = _refused(COMPACT + "\n" + COMPACT, "several_json")
    assert "2 JSON objects" in str(error)


def test_a_key_given_twice_is_refused():
    error = _refused('{"novelty": 3, "novelty": 4, "typicality": 4, "cohesion": 2, "coherence": 5}',
                     "duplicate_key")
    assert "'novelty'" in str(error)


@pytest.mark.parametrize("text", ["[3, 4, 2, 5]", '"3"', "3", "null", "[" + COMPACT + "]"])
def test_json_that_is_not_an_object(text):
    _refused(text, "not_object")


def test_a_missing_criterion_is_named():
    error = _refused('{"novelty": 3, "typicality": 4, "coherence": 5}', "missing_criterion")
    assert "'cohesion'" in str(error)


def test_an_unknown_key_is_named():
    error = _refused('{"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5, "reason": "ok"}',
                     "unknown_key")
    assert "'reason'" in str(error)


def test_braces_inside_strings_do_not_open_objects():
    # the scanner skips "} {" inside the string: the object is found whole and refused for its extra key
    text = 'Scores: {"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5, "why": "a } b {c}"} done'
    error = _refused(text, "unknown_key")
    assert "'why'" in str(error)
    error = _refused(_with('"{3}"'), "not_integer")
    assert 'novelty = "{3}"' in str(error)


@pytest.mark.parametrize("value", ["3.5", "3.0", '"3"', "true", "false", "null", "[3]", "NaN"])
def test_a_score_that_is_not_an_integer(value):
    error = _refused(_with(value), "not_integer")
    assert str(error).startswith("novelty = ")
    assert "allowed: an integer from 1 to 5" in str(error)


@pytest.mark.parametrize("value", ["7", "0", "-1", "6"])
def test_a_score_outside_the_scale(value):
    error = _refused(_with(value), "out_of_range")
    assert str(error) == f"novelty = {value} is outside the scale; allowed: an integer from 1 to 5"


def test_answer_error_is_a_value_error():
    assert issubclass(AnswerError, ValueError)


# --- G-Eval's expected score --------------------------------------------------------------------------------

def test_expected_score_hand_computed():
    # p(3) = 0.5, p(4) = 0.25 + 0.25 from "4" and " 4": 0.5 * 3 + 0.5 * 4 = 3.5
    expected, mass = expected_score([("3", math.log(0.5)), ("4", math.log(0.25)), (" 4", math.log(0.25))])
    assert expected == pytest.approx(3.5)
    assert mass == pytest.approx(1.0)


def test_a_non_score_token_lowers_the_mass_only():
    expected, mass = expected_score([("3", math.log(0.4)), ("5", math.log(0.4)), ("three", math.log(0.2))])
    assert expected == pytest.approx(4.0)
    assert mass == pytest.approx(0.8)


def test_tokens_spelling_the_same_score_are_summed():
    expected, mass = expected_score([(" 3", math.log(0.3)), ("3", math.log(0.3)), ('"1', math.log(0.2)),
                                     ("1\n", math.log(0.2))])
    assert expected == pytest.approx((0.6 * 3 + 0.4 * 1) / 1.0)
    assert mass == pytest.approx(1.0)


def test_tokens_off_the_scale_or_not_exactly_an_integer_do_not_count():
    alternatives = [("2", math.log(0.1)), ("6", math.log(0.2)), ("0", math.log(0.2)), ("03", math.log(0.1)),
                    ("3.", math.log(0.1)), ("-1", math.log(0.1)), (":3", math.log(0.2))]
    assert expected_score(alternatives) == (pytest.approx(2.0), pytest.approx(0.1))


def test_no_score_token_gives_none():
    assert expected_score([("three", -0.1), (",", -2.0)]) is None
    assert expected_score([]) is None
    assert expected_score([("3", -math.inf)]) is None


# --- score tokens in a generated answer ---------------------------------------------------------------------

def _token(text: str, logprob: float, top: list | None = None) -> dict:
    return {"token": text, "logprob": logprob, "top": top if top is not None else [[text, logprob]]}


def _tokenised(novelty_tokens: list[dict]) -> list[dict]:
    """COMPACT as a server might split it, with the given tokens for ': 3'."""
    return [_token("{", -0.01), _token('"', -0.01), _token("nov", -0.01), _token("elty", -0.01),
            _token('"', -0.01), *novelty_tokens, _token(",", -0.01),
            _token(' "typicality":', -0.1), _token(" ", -0.01),
            _token("4", math.log(0.6), [["4", math.log(0.6)], ["5", math.log(0.3)], ["x", math.log(0.1)]]),
            _token(', "cohesion": ', -0.1),
            _token("2", math.log(0.5), [["3", math.log(0.5)]]),  # chosen token missing from its top list
            _token(', "coherence"', -0.1), _token(":", -0.01), _token("", 0.0), _token(" 5", -0.2),
            _token("}", -0.01)]


SPLIT_NOVELTY = [_token(":", -0.01), _token(" 3", math.log(0.5),
                                            [[" 3", math.log(0.5)], [" 4", math.log(0.25)], [" 2", math.log(0.25)]])]


def test_the_tokens_rebuild_the_answer():
    assert "".join(t["token"] for t in _tokenised(SPLIT_NOVELTY)) == COMPACT


def test_alternatives_at_each_score_token():
    parsed = parse_answer(COMPACT)
    alternatives = score_token_alternatives(parsed, _tokenised(SPLIT_NOVELTY))
    assert list(alternatives) == list(CRITERION_NAMES)
    assert alternatives["novelty"] == [(" 3", math.log(0.5)), (" 4", math.log(0.25)), (" 2", math.log(0.25))]
    assert alternatives["typicality"] == [("4", math.log(0.6)), ("5", math.log(0.3)), ("x", math.log(0.1))]
    assert alternatives["cohesion"] == [("3", math.log(0.5)), ("2", math.log(0.5))]  # chosen one added
    assert alternatives["coherence"] == [(" 5", -0.2)]  # after an empty token


def test_a_score_sharing_its_token_gives_none():
    parsed = parse_answer(COMPACT)
    shared = [_token(": 3", math.log(0.9), [[": 3", math.log(0.9)], [": 4", math.log(0.1)]])]
    alternatives = score_token_alternatives(parsed, _tokenised(shared))
    assert alternatives["novelty"] is None
    assert alternatives["typicality"] is not None
    tight = parse_answer(COMPACT.replace(": 3", ":3"))
    tokens = _tokenised([_token(":3", -0.1)])
    assert "".join(t["token"] for t in tokens) == tight.text
    assert score_token_alternatives(tight, tokens)["novelty"] is None


def test_tokens_that_do_not_rebuild_the_answer_give_none_everywhere():
    parsed = parse_answer(COMPACT)
    normalised = _tokenised(SPLIT_NOVELTY)
    normalised[0] = _token("{ ", -0.01)
    assert score_token_alternatives(parsed, normalised) == {name: None for name in CRITERION_NAMES}
    assert score_token_alternatives(parsed, []) == {name: None for name in CRITERION_NAMES}


def test_expected_scores_per_criterion():
    parsed = parse_answer(COMPACT)
    result = expected_scores(parsed, _tokenised(SPLIT_NOVELTY))
    assert list(result) == list(CRITERION_NAMES)
    assert result["novelty"]["expected"] == pytest.approx(0.5 * 3 + 0.25 * 4 + 0.25 * 2)
    assert result["novelty"]["mass"] == pytest.approx(1.0)
    assert result["typicality"]["expected"] == pytest.approx((0.6 * 4 + 0.3 * 5) / 0.9)
    assert result["typicality"]["mass"] == pytest.approx(0.9)
    assert result["cohesion"] == {"expected": pytest.approx(2.5), "mass": pytest.approx(1.0)}
    assert result["coherence"] == {"expected": pytest.approx(5.0), "mass": pytest.approx(math.exp(-0.2))}


def test_expected_scores_are_none_where_no_distribution_can_be_read():
    parsed = parse_answer(COMPACT)
    shared = [_token(": 3", -0.1)]
    result = expected_scores(parsed, _tokenised(shared))
    assert result["novelty"] == {"expected": None, "mass": None}
    normalised = [_token(COMPACT.upper(), 0.0)]
    assert expected_scores(parsed, normalised) == {name: {"expected": None, "mass": None} for name in CRITERION_NAMES}


def test_parsed_answer_is_frozen():
    parsed = parse_answer(COMPACT)
    assert isinstance(parsed, ParsedAnswer)
    with pytest.raises(AttributeError):
        parsed.extra_text = True  # type: ignore[misc]


def test_whitespace_a_server_trimmed_from_the_answer_but_not_from_its_tokens_is_allowed():
    # llama-server returns message.content stripped, its tokens not: "\n\n" after the object, "  " before it.
    parsed = parse_answer(COMPACT)
    tokens = [_token("  ", -0.01), *_tokenised(SPLIT_NOVELTY), _token("\n", -0.1), _token("\n", -0.1)]
    alternatives = score_token_alternatives(parsed, tokens)
    assert alternatives == score_token_alternatives(parsed, _tokenised(SPLIT_NOVELTY))
    padded = parse_answer("\n" + COMPACT)  # the answer keeps one newline, the tokens have two
    assert score_token_alternatives(padded, [_token("\n\n", -0.1), *_tokenised(SPLIT_NOVELTY)]) == alternatives


def test_a_code_fence_the_server_took_off_the_answer_but_not_its_tokens_is_allowed():
    # llama-server under a json_schema: content '{...}', tokens '```json\n{...}\n```'.
    parsed = parse_answer(COMPACT)
    tokens = [_token("```", -0.1), _token("json", -0.1), _token("\n", -0.1), *_tokenised(SPLIT_NOVELTY),
              _token("\n", -0.1), _token("```", -0.1)]
    assert score_token_alternatives(parsed, tokens) == score_token_alternatives(parsed, _tokenised(SPLIT_NOVELTY))
    twice = [*_tokenised(SPLIT_NOVELTY), *_tokenised(SPLIT_NOVELTY)]  # which copy is the answer? none trusted
    assert score_token_alternatives(parsed, twice) == {name: None for name in CRITERION_NAMES}


def test_a_null_log_prob_from_a_server_is_left_out_not_a_crash():
    parsed = parse_answer(COMPACT)
    tokens = _tokenised([_token(":", -0.01), _token(" 3", math.log(0.5), [[" 3", math.log(0.5)], [" 4", None]])])
    assert score_token_alternatives(parsed, tokens)["novelty"] == [(" 3", math.log(0.5))]
