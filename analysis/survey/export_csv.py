"""The long packets CSV: one row per (participant, story shown), for any survey platform.

Columns: ``participant, kind, position, blinded_id, text`` and empty rating
columns (``novelty, typicality, cohesion, coherence``) and participant
questions (``genai_familiarity, genai_comfort``) to fill in; ``kind`` is
``practice`` (the same stories for everyone, not analysed) or ``story``.
``position`` counts from 1 within each kind. The exemplar is in
``exemplar.txt`` beside it.
"""

from __future__ import annotations

import pandas as pd

from analysis.survey.blinding import Survey
from analysis.survey.files import csv_text
from analysis.survey.questions import CRITERION_NAMES

LONG_COLUMNS = ("participant", "kind", "position", "blinded_id", "text")
FILL_IN_COLUMNS = (*CRITERION_NAMES, "genai_familiarity", "genai_comfort")


def packets_frame(survey: Survey) -> pd.DataFrame:
    rows = []
    for packet in survey.packets:
        for kind, stories in (("practice", survey.practice), ("story", packet.stories)):
            for position, story in enumerate(stories, start=1):
                rows.append({"participant": packet.label, "kind": kind, "position": position,
                             "blinded_id": story.blinded_id, "text": story.text,
                             **{column: "" for column in FILL_IN_COLUMNS}})
    return pd.DataFrame(rows, columns=[*LONG_COLUMNS, *FILL_IN_COLUMNS])


def packets_csv(survey: Survey) -> str:
    return csv_text(packets_frame(survey), guard_columns=("text",))
