"""The survey as a Qualtrics import file in the Advanced TXT format.

Structure: an instructions block (with the paper's definitions and the
exemplar), a practice block, one block per packet (``Packet P01`` ...) and an
"About you" block. Each story is one page: the story, the exemplar beside the
novelty and typicality questions, and the four criteria as one-row 1-5 Likert
matrices (Advanced TXT has no slider type). The question ids make the export
self-describing: ``P03_2_k7QzX2_Novelty`` (packet, position, blinded id,
criterion) is exported by Qualtrics as the column ``P03_2_k7QzX2_Novelty_1``,
which :mod:`analysis.survey.formats.qualtrics` reads back without any other file.

Qualtrics cannot assign one packet block per respondent from a TXT file: the
researcher adds a Randomizer ("present 1 of N, evenly") in the Survey Flow;
``qualtrics_setup_notes`` says how.

Tags used: ``[[AdvancedFormat]]``, ``[[Block:...]]``, ``[[PageBreak]]``,
``[[Question:Text]]`` (descriptive text), ``[[Question:Matrix]]`` with
``[[Choices]]`` (rows) and ``[[Answers]]`` (scale points, recoded 1..5 in
order), ``[[Question:TE:Essay]]`` and ``[[ID:...]]``.
"""

from __future__ import annotations

import html

from analysis.survey.blinding import ShownStory, Survey
from analysis.survey.questions import CRITERIA, PARTICIPANT_QUESTIONS, SCALE, Criterion, exemplar_note, instructions


def qualtrics_text(value: str) -> str:
    """Untrusted text as one line of Qualtrics question HTML.

    HTML is escaped; ``[`` and ``]`` are escaped so a story can never open a
    ``[[...]]`` tag of the file format; ``$`` so that ``${...}`` is never
    taken for Qualtrics piped text; line breaks become ``<br>``.
    """
    escaped = html.escape(value.replace("\r\n", "\n").replace("\r", "\n"), quote=True)
    escaped = escaped.replace("[", "&#91;").replace("]", "&#93;").replace("$", "&#36;")
    return escaped.replace("\n", "<br>")


def _scale_answers(low: str, high: str) -> list[str]:
    points = list(range(SCALE[0], SCALE[1] + 1))
    labels = [str(point) for point in points]
    labels[0] = f"{points[0]} ({low})"
    labels[-1] = f"{points[-1]} ({high})"
    return labels


def _text_question(question_id: str, body: str) -> list[str]:
    return ["[[Question:Text]]", f"[[ID:{question_id}]]", body, ""]


def _matrix_question(question_id: str, body: str, row: str, answers: list[str]) -> list[str]:
    return ["[[Question:Matrix]]", f"[[ID:{question_id}]]", body, "[[Choices]]", row, "[[Answers]]", *answers, ""]


def _criterion_body(criterion: Criterion) -> str:
    return (f"<b>{criterion.label}</b>: {qualtrics_text(criterion.question)}"
            f"<br><i>{qualtrics_text(criterion.definition)}</i>")


def _exemplar_box(exemplar: ShownStory) -> str:
    return (f"<b>The exemplar story</b>, for comparison ({exemplar_note().lower()} judged against it):<br>"
            f"<div>{qualtrics_text(exemplar.text)}</div>")


def _story_page(prefix: str, heading: str, story: ShownStory, exemplar: ShownStory) -> list[str]:
    lines = _text_question(f"{prefix}_Story", f"<b>{qualtrics_text(heading)}</b><br><br>{qualtrics_text(story.text)}")
    lines += _text_question(f"{prefix}_Exemplar", _exemplar_box(exemplar))
    for criterion in CRITERIA:  # novelty and typicality first: right below the exemplar
        lines += _matrix_question(f"{prefix}_{criterion.label}", _criterion_body(criterion), criterion.label,
                                  _scale_answers(criterion.low, criterion.high))
    return lines + ["[[PageBreak]]", ""]


def qualtrics_survey(survey: Survey, title: str) -> str:
    definitions = "<br>".join(f"<b>{c.label}</b>: {qualtrics_text(c.definition)}" for c in CRITERIA)
    lines = ["[[AdvancedFormat]]", "", "[[Block:Instructions]]", ""]
    lines += _text_question("Instructions", f"<h2>{qualtrics_text(title)}</h2>"
                            + "".join(f"<p>{qualtrics_text(p)}</p>" for p in instructions(len(survey.practice))))
    lines += _text_question("Definitions", f"<b>Definitions</b><br>{definitions}")
    lines += ["[[PageBreak]]", ""]
    lines += _text_question("Exemplar_Intro", "<b>The exemplar story.</b> Please read it carefully: "
                            f"{exemplar_note().lower()} judged by comparing a story with it.<br><br>"
                            f"<div>{qualtrics_text(survey.exemplar.text)}</div>")
    if survey.practice:
        lines += ["[[Block:Practice]]", ""]
        for index, story in enumerate(survey.practice, start=1):
            lines += _story_page(f"Practice_{index}_{story.blinded_id}",
                                 f"Practice story {index} of {len(survey.practice)}", story, survey.exemplar)
    for packet in survey.packets:
        lines += [f"[[Block:Packet {packet.label}]]", ""]
        for position, story in enumerate(packet.stories, start=1):
            lines += _story_page(f"{packet.label}_{position}_{story.blinded_id}",
                                 f"Story {position} of {len(packet.stories)}", story, survey.exemplar)
    lines += ["[[Block:About you]]", ""]
    for question in PARTICIPANT_QUESTIONS:
        if question.kind == "text":
            lines += ["[[Question:TE:Essay]]", f"[[ID:{question.qualtrics_id}]]", qualtrics_text(question.question), ""]
        else:
            lines += _matrix_question(question.qualtrics_id, qualtrics_text(question.question),
                                      question.qualtrics_id.replace("_", " "),
                                      _scale_answers(question.low, question.high))
    return "\n".join(lines).rstrip("\n") + "\n"


def qualtrics_setup_notes(survey: Survey) -> str:
    """What the researcher does in Qualtrics after importing the TXT (Survey Flow cannot be imported)."""
    labels = [p.label for p in survey.packets]
    packets = ", ".join(labels)
    if len(labels) > 4:
        packets = f"{labels[0]}, {labels[1]}, ..., {labels[-1]}: {len(labels)} blocks"
    blocks = "`Instructions`, then `Practice`"
    if not survey.practice:
        blocks = "`Instructions` (there is no practice block: practice=0)"
    return f"""# Setting up the Qualtrics survey (survey {survey.survey_id})

1. Create a project, then Tools > Import/Export > Import survey, and choose `participant/qualtrics.txt`.
2. Survey Flow:
   - at the top, an Embedded Data element `PROLIFIC_PID` (value from the panel / URL) if you recruit on Prolific;
   - the blocks {blocks};
   - a Randomizer holding every packet block (Packet {packets}), set to "Randomly present 1 of the
     following elements" with "Evenly Present Elements" ticked: this is what keeps the design balanced;
   - then `About you`, then an End of Survey element (for Prolific: redirect to its completion link).
3. Make the rating questions "Force response" if you want complete answers (Qualtrics cannot import this setting).
4. Do not rename the questions: their ids (`P03_2_<blinded id>_Novelty`) tell the importer which story was rated.
5. Export the responses as CSV with "Use numeric values", then:
   `python -m analysis.survey import input=EXPORT.csv out=ratings.csv key=researcher/unblinding_key.csv`
"""
