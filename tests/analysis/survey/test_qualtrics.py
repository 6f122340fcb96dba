"""The Qualtrics Advanced TXT file parses back into the intended blocks and questions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from analysis.survey.blinding import Packet, ShownStory, Survey
from analysis.survey.qualtrics import qualtrics_survey, qualtrics_text
from analysis.survey.questions import CRITERIA, PARTICIPANT_QUESTIONS

TAG = re.compile(r"^\[\[([A-Za-z]+)(?::(.*))?\]\]$")


@dataclass
class Question:
    type: str
    id: str = ""
    text: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


@dataclass
class Block:
    name: str
    pages: list[list[Question]] = field(default_factory=lambda: [[]])


def parse_advanced_txt(text: str) -> list[Block]:
    """A small reader of the Advanced TXT format, strict about what it does not know."""
    lines = text.split("\n")
    assert lines[0] == "[[AdvancedFormat]]"
    blocks: list[Block] = []
    question: Question | None = None
    section = "text"
    for line in lines[1:]:
        match = TAG.match(line.strip())
        if match:
            name, argument = match.groups()
            if name == "Block":
                blocks.append(Block(argument))
                question = None
            elif name == "PageBreak":
                blocks[-1].pages.append([])
                question = None
            elif name == "Question":
                question = Question(argument)
                blocks[-1].pages[-1].append(question)
                section = "text"
            elif name == "ID":
                question.id = argument
            elif name in ("Choices", "Answers"):
                section = name.lower()
            else:
                raise AssertionError(f"unknown tag {line!r}")
            continue
        assert "[[" not in line and "]]" not in line, f"stray tag text: {line!r}"
        if line.strip() == "":
            continue
        assert question is not None, f"text outside a question: {line!r}"
        getattr(question, section).append(line) if section != "text" else question.text.append(line)
    for block in blocks:
        block.pages = [page for page in block.pages if page]
    return blocks


def test_structure_of_the_exported_file(small_export):
    survey = small_export.survey
    blocks = parse_advanced_txt((small_export.out_dir / "participant" / "qualtrics.txt").read_text())
    names = [b.name for b in blocks]
    assert names == ["Instructions", "Practice", *[f"Packet {p.label}" for p in survey.packets], "About you"]

    instructions = blocks[0]
    all_text = " ".join(" ".join(q.text) for page in instructions.pages for q in page)
    for criterion in CRITERIA:  # the paper's definitions
        assert qualtrics_text(criterion.definition) in all_text
    assert qualtrics_text(survey.exemplar.text.split("\n")[0]) in all_text

    story_blocks = {b.name: b for b in blocks[2:-1]}
    for packet in survey.packets:
        pages = story_blocks[f"Packet {packet.label}"].pages
        assert len(pages) == len(packet.stories) == 3
        for position, (page, story) in enumerate(zip(pages, packet.stories), start=1):
            prefix = f"{packet.label}_{position}_{story.blinded_id}"
            assert [q.type for q in page] == ["Text", "Text", "Matrix", "Matrix", "Matrix", "Matrix"]
            assert [q.id for q in page] == [f"{prefix}_Story", f"{prefix}_Exemplar",
                                           *[f"{prefix}_{c.label}" for c in CRITERIA]]
            assert qualtrics_text(story.text) in page[0].text[0]
            # the exemplar comes right before the novelty and typicality questions
            assert qualtrics_text(survey.exemplar.text) in page[1].text[0]
            assert [q.choices for q in page[2:4]] == [["Novelty"], ["Typicality"]]
            for question, criterion in zip(page[2:], CRITERIA):
                assert criterion.question in question.text[0] and criterion.definition in question.text[0]
                assert [a.split(" ")[0] for a in question.answers] == ["1", "2", "3", "4", "5"]

    practice = blocks[1].pages
    assert [page[0].id for page in practice] == [f"Practice_{i}_{s.blinded_id}_Story"
                                                 for i, s in enumerate(survey.practice, start=1)]
    about = blocks[-1].pages[0]
    assert [q.id for q in about] == [q.qualtrics_id for q in PARTICIPANT_QUESTIONS]
    assert [q.type for q in about] == ["TE:Essay", "TE:Essay", "Matrix", "Matrix", "TE:Essay"]


def test_untrusted_story_text_cannot_break_the_file():
    nasty = "[[Block:Evil]]\n[[Question:Text]]\n${e://Field/secret} <script>alert(1)</script>\r\nend"
    survey = Survey("Sv1abc", ShownStory("Ex1abc", "exemplar"), (),
                    (Packet("P01", (ShownStory("St1abc", nasty),)),))
    text = qualtrics_survey(survey, "Title <b>")
    blocks = parse_advanced_txt(text)
    assert [b.name for b in blocks] == ["Instructions", "Packet P01", "About you"]
    story = blocks[1].pages[0][0].text
    assert len(story) == 1  # one line: the line breaks are <br>
    assert "&lt;script&gt;" in story[0] and "&#36;{e://" in story[0] and "&#91;&#91;Block" in story[0]
    assert "<script>" not in text and "Title <b>" not in text


def test_exported_question_ids_are_what_the_importer_reads(small_export, tmp_path):
    """Column names Qualtrics makes from the ids (ID + '_1' for a one-row matrix) import back."""
    from analysis.survey.config import ImportConfig
    from analysis.survey.ingest import import_ratings

    blocks = parse_advanced_txt((small_export.out_dir / "participant" / "qualtrics.txt").read_text())
    packet = small_export.survey.packets[4]
    row = {"ResponseId": "R_1", "Finished": "True", "PROLIFIC_PID": "pid-1", "GenAI_Familiarity_1": "3",
           "GenAI_Comfort_1": "2", "Story_Writing": "none"}
    for block in blocks:
        for page in block.pages:
            for question in page:
                if question.type == "Matrix" and not question.id.startswith("GenAI"):
                    answered = question.id.startswith(packet.label) or question.id.startswith("Practice")
                    row[question.id + "_1"] = "4" if answered else ""
    pd.DataFrame([row]).to_csv(tmp_path / "export.csv", index=False)
    result = import_ratings(ImportConfig(input=str(tmp_path / "export.csv"), out=str(tmp_path / "r.csv"),
                                         key=str(small_export.out_dir / "researcher" / "unblinding_key.csv")))
    assert list(result.ratings["blinded_id"]) == [s.blinded_id for s in packet.stories]
    assert list(result.ratings["evaluation_index"]) == [1, 2, 3]
    assert (result.ratings["novelty"] == 4.0).all() and (result.ratings["participant_id"] == "pid-1").all()
