"""The four rating criteria of the study and their scale, named once.

Everything that lists the criteria imports them from here: the ratings
contract (:mod:`analysis.ratings`), the analysis configs
(:mod:`analysis.config`, whose defaults ``conf/report.yaml`` inherits), the
survey pages and files (:mod:`analysis.survey`) and the rating import. A
later LLM judge can ask the same questions with the same wording.

Wording from the questionnaire in the supplementary material of Peeperkorn et
al. (ICCC 2024, arXiv 2405.00492, Appendix A). As in their survey, the
prototype story is called the "exemplar story". The scale anchors (``low``,
``high``) are ours: the paper gives only "a five-point scale".
"""

from __future__ import annotations

from dataclasses import dataclass

SCALE_MIN = 1  # the paper's five-point scale (its sliders were continuous on [1, 5])
SCALE_MAX = 5


@dataclass(frozen=True)
class Criterion:
    name: str  # column name in every ratings table
    label: str  # as shown, and as the Qualtrics question id part (paper: 1_Novelty_1)
    question: str  # the survey question
    definition: str  # the definition shown with it
    low: str  # anchor of scale_min
    high: str  # anchor of scale_max
    compares_to_exemplar: bool  # judged by comparing the story with the exemplar story
    scale_min: int = SCALE_MIN
    scale_max: int = SCALE_MAX


CRITERIA: tuple[Criterion, ...] = (
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
CRITERION_NAMES: tuple[str, ...] = tuple(c.name for c in CRITERIA)
EXEMPLAR_CRITERIA: tuple[Criterion, ...] = tuple(c for c in CRITERIA if c.compares_to_exemplar)


def _common_scale() -> tuple[int, int]:
    scales = {(c.scale_min, c.scale_max) for c in CRITERIA}
    if len(scales) != 1:  # one slider range and one declared scale serve every criterion
        raise ValueError(f"the criteria do not share one scale: {sorted(scales)}")
    return scales.pop()


SCALE: tuple[int, int] = _common_scale()


def criterion(name: str) -> Criterion:
    """The criterion called ``name`` (a column name such as ``novelty``)."""
    for item in CRITERIA:
        if item.name == name:
            return item
    raise KeyError(f"unknown criterion {name!r}; known: {', '.join(CRITERION_NAMES)}")
