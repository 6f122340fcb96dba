"""What participants are asked: the paper's questions and definitions, in one place.

Wording from the questionnaire in the supplementary material of Peeperkorn et
al. (ICCC 2024, arXiv 2405.00492, Appendix A). As in their survey, the
prototype story is called the "exemplar story". The scale anchors are ours:
the paper gives only "a five-point scale".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    name: str  # column name in every ratings table
    label: str  # as shown, and as the Qualtrics question id part (paper: 1_Novelty_1)
    question: str
    definition: str
    low: str  # anchor of 1
    high: str  # anchor of 5
    compares_to_exemplar: bool


CRITERIA = (
    Criterion("novelty", "Novelty",
              "To what extent is the above story novel compared to the exemplar story?",
              "A story is novel if it has something new or unusual.",
              "Not at all novel", "Very novel", True),
    Criterion("typicality", "Typicality",
              "To what extent is the above story typical compared to the exemplar story?",
              "A story is considered typical if it exhibits essential characteristics of a story.",
              "Not at all typical", "Very typical", True),
    Criterion("cohesion", "Cohesion",
              "To what extent is the above story consistent (e.g. sentences are connected and characters, "
              "events and actions are used appropriately)?",
              "A story is cohesive if the use of words and sentences are grammatically consistent. "
              "Characters, events, and actions are used appropriately.",
              "Not at all consistent", "Very consistent", False),
    Criterion("coherence", "Coherence",
              "To what extent is it easy or difficult to follow and understand the above story?",
              "A story is coherent if it is easy to follow and understand its meaning.",
              "Very difficult to follow", "Very easy to follow", False),
)
CRITERION_NAMES = tuple(c.name for c in CRITERIA)
SCALE = (1, 5)


@dataclass(frozen=True)
class ParticipantQuestion:
    name: str  # column name in the ratings table
    qualtrics_id: str  # question id in the Qualtrics file
    question: str
    kind: str  # "text" (open answer) or "scale" (1 to 5)
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

INSTRUCTIONS = (
    "Thank you for taking part. You will read short stories and rate each of them on four criteria: "
    "novelty, typicality, cohesion and coherence, each on a scale from 1 to 5.",
    "First you will read an exemplar story. Novelty and typicality are judged by comparing a story with "
    "this exemplar, which stays available on every page.",
    "Two practice stories come first, so you can get used to the task; then the stories of your study. "
    "There are no right or wrong answers: we are interested in your own judgement.",
    "At the end we ask a few questions about you. Please read every story in full before rating it.",
)


def definitions_text() -> str:
    return "\n".join(f"{c.label}: {c.definition}" for c in CRITERIA)
