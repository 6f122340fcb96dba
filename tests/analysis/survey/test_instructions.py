"""Participant-facing text follows the design it describes: 0, 1 or 2 practice stories, the criteria named once."""

from __future__ import annotations

import html
import json
import re

import pandas as pd
import pytest

from analysis.criteria import CRITERIA, CRITERION_NAMES, SCALE
from analysis.survey.questions import instructions

from .synthetic import export, write_run
from .test_qualtrics import parse_advanced_txt

PRACTICE_SENTENCE = {
    0: None,
    1: "One practice story comes first, so you can get used to the task; then the stories of your study.",
    2: "Two practice stories come first, so you can get used to the task; then the stories of your study.",
}


def html_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="survey-data">(.*?)</script>', page, flags=re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("practice")
    run = write_run(base / "run")
    return {practice: export(run, base / f"survey{practice}", participants=10, stories_per_participant=3,
                             stories_per_setting=4, practice=practice) for practice in PRACTICE_SENTENCE}


@pytest.mark.parametrize("practice", sorted(PRACTICE_SENTENCE))
def test_the_instructions_count_the_practice_stories(practice, exports):
    result = exports[practice]
    assert len(result.survey.practice) == practice
    participant = result.out_dir / "participant"
    expected = instructions(practice)
    sentence = PRACTICE_SENTENCE[practice]

    # HTML: the instructions page shows exactly these paragraphs.
    data = html_data((participant / "survey.html").read_text(encoding="utf-8"))
    assert data["instructions"] == list(expected) and len(data["practice"]) == practice
    # Qualtrics: the instructions question, and a practice block only when there are practice stories.
    blocks = parse_advanced_txt((participant / "qualtrics.txt").read_text(encoding="utf-8"))
    first = " ".join(blocks[0].pages[0][0].text)
    assert [html.unescape(p) for p in re.findall(r"<p>(.*?)</p>", first)] == list(expected)
    assert ("Practice" in [b.name for b in blocks]) == (practice > 0)
    setup = (result.out_dir / "researcher" / "qualtrics_setup.md").read_text(encoding="utf-8")
    assert ("`Practice`" in setup) == (practice > 0)
    # CSV: the practice rows each participant is given (the CSV carries no instructions).
    packets = pd.read_csv(participant / "packets.csv", dtype=str, keep_default_na=False)
    assert (packets.loc[packets["kind"] == "practice"].groupby("participant").size() == practice).all()
    assert (packets["kind"] == "practice").sum() == 10 * practice

    for text in (" ".join(data["instructions"]), first):
        text = html.unescape(text)
        if sentence is None:
            assert "practice" not in text.lower()
        else:
            assert sentence in text
        for count, wrong in ((1, "One practice"), (2, "Two practice")):
            assert (wrong in text) == (count == practice)


def test_the_instructions_name_the_criteria_and_scale_of_the_single_source():
    text = " ".join(instructions(2))
    assert f"on four criteria: {', '.join(CRITERION_NAMES[:-1])} and {CRITERION_NAMES[-1]}" in text
    assert f"each on a scale from {SCALE[0]} to {SCALE[1]}" in text
    exemplar = [c.name for c in CRITERIA if c.compares_to_exemplar]
    assert f"{exemplar[0].capitalize()} and {exemplar[1]} are judged by comparing a story with this exemplar" in text
    with pytest.raises(ValueError, match="practice=-1"):
        instructions(-1)


def test_the_html_survey_takes_its_criteria_and_scale_from_the_single_source(exports):
    data = html_data((exports[2].out_dir / "participant" / "survey.html").read_text(encoding="utf-8"))
    assert [c["name"] for c in data["criteria"]] == list(CRITERION_NAMES)
    assert [c["question"] for c in data["criteria"]] == [c.question for c in CRITERIA]
    assert data["scale"] == list(SCALE) and data["exemplar_note"] == "Novelty and typicality are"
