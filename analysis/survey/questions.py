"""What participants are asked and told: criteria, participant questions, instructions.

The criteria (wording, definitions, scale) are those of :mod:`analysis.criteria`,
re-exported here; this module adds the participant questions and the
instructions, which follow the design they describe (how many practice
stories, which criteria compare with the exemplar).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.criteria import CRITERIA, CRITERION_NAMES, EXEMPLAR_CRITERIA, SCALE, Criterion

__all__ = ["CRITERIA", "CRITERION_NAMES", "COVARIATE_NAMES", "Criterion", "EXEMPLAR_CRITERIA",
           "PARTICIPANT_QUESTIONS", "ParticipantQuestion", "SCALE", "definitions_text", "exemplar_note",
           "instructions"]


@dataclass(frozen=True)
class ParticipantQuestion:
    name: str  # column name in the ratings table
    qualtrics_id: str  # question id in the Qualtrics file
    question: str
    kind: str  # "text" (open answer) or "scale" (integers on SCALE)
    low: str = ""
    high: str = ""


PARTICIPANT_QUESTIONS = (
    ParticipantQuestion("story_writing", "Story_Writing",
                        "Can you describe your experience with writing (short) stories, if any?", "text"),
    ParticipantQuestion("story_reviewing", "Story_Reviewing",
                        "Can you describe your experience with reviewing things you have read, if any?", "text"),
    ParticipantQuestion("genai_familiarity", "GenAI_Familiarity",
                        "How familiar are you with generative AI?", "scale",
                        "Not at all familiar", "Extremely familiar"),
    ParticipantQuestion("genai_comfort", "GenAI_Comfort",
                        "How comfortable are you with generative AI being used in creative works, such as art, "
                        "music, and writing?", "scale",
                        "Not at all comfortable", "Extremely comfortable"),
    ParticipantQuestion("evaluation_approach", "Eval_Approach",
                        "Do you have any comments on how you approached evaluating the stories in this study?",
                        "text"),
)
COVARIATE_NAMES = tuple(q.name for q in PARTICIPANT_QUESTIONS)

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _count(number: int) -> str:
    return _NUMBER_WORDS[number] if 0 <= number < len(_NUMBER_WORDS) else str(number)


def _and_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def exemplar_note() -> str:
    """Which criteria are judged against the exemplar: "Novelty and typicality are"."""
    names = _and_list([c.name for c in EXEMPLAR_CRITERIA])
    return names[0].upper() + names[1:] + (" is" if len(EXEMPLAR_CRITERIA) == 1 else " are")


def instructions(practice: int) -> tuple[str, ...]:
    """The instructions page, for a survey with ``practice`` practice stories before the packet."""
    if practice < 0:
        raise ValueError(f"practice={practice} is not allowed: an integer >= 0")
    if practice == 0:
        order = "Then come the stories of your study."
    else:
        stories = "story comes" if practice == 1 else "stories come"
        order = f"{_count(practice).capitalize()} practice {stories} first, so you can get used to the task; " \
                "then the stories of your study."
    criteria = f"{_count(len(CRITERIA))} {'criterion' if len(CRITERIA) == 1 else 'criteria'}"
    paragraphs = [
        f"Thank you for taking part. You will read short stories and rate each of them on {criteria}: "
        f"{_and_list([c.name for c in CRITERIA])}, each on a scale from {SCALE[0]} to {SCALE[1]}.",
    ]
    if EXEMPLAR_CRITERIA:
        paragraphs.append(f"First you will read an exemplar story. {exemplar_note()} judged by comparing a story "
                          "with this exemplar, which stays available on every page.")
    paragraphs += [
        f"{order} There are no right or wrong answers: we are interested in your own judgement.",
        "At the end we ask a few questions about you. Please read every story in full before rating it.",
    ]
    return tuple(paragraphs)


def definitions_text() -> str:
    return "\n".join(f"{c.label}: {c.definition}" for c in CRITERIA)
