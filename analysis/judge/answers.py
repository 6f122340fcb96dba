"""Read an LLM judge's answer: strict parsing, and G-Eval's probability-weighted score.

The judge is asked for exactly one JSON object holding one integer score per
criterion, e.g. ``{"novelty": 3, "typicality": 4, "cohesion": 2, "coherence": 5}``
(keys and scale from :mod:`analysis.criteria`). :func:`parse_answer` accepts
that object with text around it (a code fence, a sentence of prose) and refuses
anything else with an :class:`AnswerError` whose ``kind`` says what went wrong,
so a run can count its refusals by cause.

The score a judge writes is one draw from its distribution over the scale.
G-Eval (Liu et al., EMNLP 2023) instead reads the token probabilities at the
score's position and takes the expected score, which is finer grained and less
tied to the sampled token: :func:`expected_score` computes it from the top-k
alternatives a server returns, :func:`score_token_alternatives` finds those
alternatives for each score of a parsed answer, and :func:`expected_scores`
does both.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.criteria import CRITERION_NAMES, SCALE

EXCERPT = 80  # characters of a refused answer quoted in an error message

# Every string inside an accepted answer is a key and every value an integer,
# so within the object's span this finds each key (escapes included) and its digits.
_KEY_AND_SCORE = re.compile(r'("(?:[^"\\]|\\.)*")\s*:\s*(-?\d+)')


class AnswerError(ValueError):
    """A judge answer that breaks the format; ``kind`` names the break for counting.

    Kinds: ``no_json``, ``several_json``, ``invalid_json``, ``duplicate_key``,
    ``not_object``, ``missing_criterion``, ``unknown_key``, ``not_integer``,
    ``out_of_range``.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ParsedAnswer:
    scores: dict[str, int]  # criterion -> score, in criteria order
    json_span: tuple[int, int]  # [start, end) of the JSON object in the raw text
    extra_text: bool  # non-whitespace text outside the object (a fence, prose)
    score_offsets: dict[str, int]  # criterion -> offset in the raw text of its score's first digit
    text: str = ""  # the raw answer, so the generated tokens can be checked against it


def answer_schema(criteria: Sequence[str] = CRITERION_NAMES, scale: tuple[int, int] = SCALE) -> dict:
    """The JSON Schema of an answer, for a server's structured output (grammar or strict mode).

    The scale is an ``enum`` rather than ``minimum``/``maximum``: llama.cpp's
    schema-to-grammar converter and OpenAI's strict mode both enforce enums
    reliably, while numeric bounds are ignored or unsupported by some of them.
    """
    allowed = list(range(scale[0], scale[1] + 1))
    return {
        "type": "object",
        "properties": {name: {"type": "integer", "enum": allowed} for name in criteria},
        "required": list(criteria),
        "additionalProperties": False,
    }


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= EXCERPT else text[:EXCERPT] + "...")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a key given twice leaves the judge's score ambiguous."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise AnswerError("duplicate_key",
                              f"key {key!r} appears twice ({json.dumps(seen[key])} and {json.dumps(value)}); "
                              "allowed: each criterion once")
        seen[key] = value
    return seen


_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_duplicates)


def _find_object(text: str) -> tuple[dict, int, int]:
    """The one top-level JSON object in ``text`` and its span.

    Each ``{`` is tried with ``raw_decode``, which skips braces inside strings;
    after an object parses the scan resumes at its end, so nested objects are
    not counted again. A ``{`` outside the object that opens no valid JSON is
    refused as ``invalid_json`` rather than ignored: it is the mark of a broken
    or truncated answer, and picking the one piece that happens to parse would
    be guessing what the judge meant.
    """
    stripped = text.strip()
    try:  # a whole answer that is JSON but not an object: [3, 4, 2, 5], "3", 3
        whole = _DECODER.decode(stripped)
    except json.JSONDecodeError:
        pass  # not JSON as a whole: look for the object inside
    else:
        if not isinstance(whole, dict):
            raise AnswerError("not_object", f"the answer is JSON but not an object: {_excerpt(stripped)}; "
                                            "allowed: one object with one integer per criterion")
    found: list[tuple[dict, int, int]] = []
    broken: list[tuple[int, str]] = []  # where a '{' opened no valid JSON, and why
    start = text.find("{")
    while start != -1:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as error:
            broken.append((start, error.msg))
            start = text.find("{", start + 1)
        else:
            found.append((value, start, end))
            start = text.find("{", end)
    if len(found) > 1:
        spans = ", ".join(f"{s}-{e}" for _, s, e in found)
        raise AnswerError("several_json", f"the answer holds {len(found)} JSON objects (characters {spans}); "
                                          "allowed: exactly one")
    if not found:
        if broken:
            at, why = broken[0]
            raise AnswerError("invalid_json", f"the answer has a '{{' at character {at} but no valid JSON object "
                                              f"({why}): {_excerpt(text[at:])}")
        raise AnswerError("no_json", f"the answer holds no JSON object: {_excerpt(text)}")
    value, start, end = found[0]
    outside = [(at, why) for at, why in broken if not start <= at < end]
    if outside:
        at, why = outside[0]
        raise AnswerError("invalid_json", f"besides the object at characters {start}-{end}, the answer has a '{{' "
                                          f"at character {at} that opens no valid JSON ({why}): "
                                          f"{_excerpt(text[at:])}")
    return value, start, end


def _check_scores(answer: dict, criteria: Sequence[str], scale: tuple[int, int]) -> dict[str, int]:
    allowed = f"an integer from {scale[0]} to {scale[1]}"
    missing = [name for name in criteria if name not in answer]
    if missing:
        raise AnswerError("missing_criterion", f"the answer lacks criterion {', '.join(map(repr, missing))}; "
                                               f"it has keys {list(answer)}; allowed: exactly {list(criteria)}")
    unknown = [key for key in answer if key not in criteria]
    if unknown:
        raise AnswerError("unknown_key", f"the answer has unknown key {', '.join(map(repr, unknown))}; "
                                         f"allowed: exactly {list(criteria)}")
    scores = {}
    for name in criteria:
        value = answer[name]
        # Strict on purpose: a judge that writes 3.0, "3" or true did not follow the
        # format, and its answer is counted as a refusal rather than silently repaired.
        # type() rather than isinstance(): bool is a subclass of int in Python.
        if type(value) is not int:
            raise AnswerError("not_integer", f"{name} = {json.dumps(value)} is not an integer; allowed: {allowed} "
                                             "(written as 3, not 3.0 or \"3\")")
        if not scale[0] <= value <= scale[1]:
            raise AnswerError("out_of_range", f"{name} = {value} is outside the scale; allowed: {allowed}")
        scores[name] = value
    return scores


def _score_offsets(text: str, start: int, end: int) -> dict[str, int]:
    return {json.loads(match.group(1)): match.start(2) for match in _KEY_AND_SCORE.finditer(text, start, end)}


def parse_answer(text: str, criteria: Sequence[str] = CRITERION_NAMES,
                 scale: tuple[int, int] = SCALE) -> ParsedAnswer:
    """The scores of a judge's answer, or an :class:`AnswerError` saying why there are none.

    Keys may come in any order (a JSON object has none); each criterion exactly
    once, no other key, each score an integer on the scale.
    """
    answer, start, end = _find_object(text)
    scores = _check_scores(answer, criteria, scale)
    offsets = _score_offsets(text, start, end)
    extra_text = bool(text[:start].strip() or text[end:].strip())
    return ParsedAnswer(scores=scores, json_span=(start, end), extra_text=extra_text,
                        score_offsets={name: offsets[name] for name in criteria}, text=text)


def _score_of_token(token: str, scale: tuple[int, int]) -> int | None:
    """The scale value a token spells (" 3", "3", '"3'), or None."""
    stripped = token.strip(" \t\r\n\"'")
    if not (stripped.isascii() and stripped.isdigit()) or str(int(stripped)) != stripped:
        return None  # "03", "3.", "-1", "three" and superscript digits do not count
    value = int(stripped)
    return value if scale[0] <= value <= scale[1] else None


def expected_score(alternatives: Sequence[tuple[str, float]],
                   scale: tuple[int, int] = SCALE) -> tuple[float, float] | None:
    """G-Eval's score: (sum p_s * s / sum p_s, sum p_s) over the score tokens among ``alternatives``.

    ``alternatives`` are (token text, logprob) pairs at one score's position.
    Tokens spelling the same score (" 3" and "3") add up. The mass says how much
    of the distribution the score tokens cover; below 1, other tokens or the
    cut of the top-k list took the rest. None when no alternative is a score
    token, or all of them have probability 0.
    """
    scored = [(score, logprob) for text, logprob in alternatives
              if (score := _score_of_token(text, scale)) is not None]
    if not scored:
        return None
    scores = np.array([score for score, _ in scored], dtype=float)
    probabilities = np.exp(np.array([logprob for _, logprob in scored], dtype=float))
    mass = float(probabilities.sum())
    if not mass > 0:
        return None
    return float(probabilities @ scores / mass), mass


def score_token_alternatives(parsed: ParsedAnswer, tokens: Sequence[Mapping[str, Any]]
                             ) -> dict[str, list[tuple[str, float]] | None]:
    """Per criterion, the (text, logprob) alternatives at its score's token, or None where none can be read.

    ``tokens`` are the generated tokens in order, each ``{"token": text,
    "logprob": float, "top": [[text, logprob], ...]}``. None for every criterion
    when their texts do not hold the answer's JSON object verbatim, once (a
    server that normalised the text: no offset can be trusted); None for one criterion when its score
    shares a token with other characters (":3", "3,"), since that token's
    alternatives are not a distribution over scores alone.
    """
    texts = [token["token"] for token in tokens]
    joined = "".join(texts)
    # Servers tidy the message but not its tokens: llama-server trims the newlines a grammar allows after
    # the object and takes a ```json fence off. The JSON object itself, found once and verbatim in the
    # tokens, is what the offsets need; they shift by where it starts there.
    start, end = parsed.json_span
    found = joined.find(parsed.text[start:end])
    if found < 0 or joined.find(parsed.text[start:end], found + 1) >= 0:
        return {name: None for name in parsed.scores}
    shift = found - start
    starts = [0, *itertools.accumulate(len(text) for text in texts)][:-1]
    result: dict[str, list[tuple[str, float]] | None] = {}
    for name, offset in parsed.score_offsets.items():
        # the last token starting at or before the offset; empty tokens before it are skipped
        index = bisect.bisect_right(starts, offset + shift) - 1
        token = tokens[index]
        if token["token"].strip() != str(parsed.scores[name]):
            result[name] = None
            continue
        # A log-prob a server sent as null (or not finite) says nothing about that token: left out.
        top = [(str(text), float(logprob)) for text, logprob in token.get("top") or [] if logprob is not None]
        if token["token"] not in {text for text, _ in top} and token.get("logprob") is not None:
            top.append((token["token"], float(token["logprob"])))
        result[name] = top
    return result


def expected_scores(parsed: ParsedAnswer, tokens: Sequence[Mapping[str, Any]],
                    scale: tuple[int, int] = SCALE) -> dict[str, dict[str, float | None]]:
    """Per criterion ``{"expected": ..., "mass": ...}`` from the answer's tokens; both None where unreadable."""
    result = {}
    for name, alternatives in score_token_alternatives(parsed, tokens).items():
        weighted = expected_score(alternatives, scale) if alternatives is not None else None
        expected, mass = weighted if weighted is not None else (None, None)
        result[name] = {"expected": expected, "mass": mass}
    return result
