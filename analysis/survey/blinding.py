"""Random ids for everything a participant can see.

A blinded id is drawn at random (from the export's seed), never derived from
the story id, setting or seed, so nothing about a story can be read off it.
Ids are letters and digits only and start with a letter: a spreadsheet never
takes them for a number or a formula (the paper's ``-nc7`` had to be stored as
``'-nc7``), and pandas never parses them as a number or as missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.survey.design import Selection, Slot, Story

# No 0/O, 1/l/I: ids are sometimes read aloud or typed back.
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"
ALPHABET = LETTERS + "23456789"
BLINDED_ID_LENGTH = 6


def random_id(rng: np.random.Generator, length: int = BLINDED_ID_LENGTH) -> str:
    first = LETTERS[int(rng.integers(len(LETTERS)))]
    rest = "".join(ALPHABET[int(i)] for i in rng.integers(len(ALPHABET), size=length - 1))
    return first + rest


def blinded_ids(count: int, rng: np.random.Generator, taken: set[str] | None = None) -> list[str]:
    """``count`` distinct random ids (distinct from ``taken`` too)."""
    seen = {value.lower() for value in taken or ()}  # case-insensitive file systems and eyes
    ids: list[str] = []
    while len(ids) < count:
        candidate = random_id(rng)
        if candidate.lower() not in seen:
            seen.add(candidate.lower())
            ids.append(candidate)
    return ids


# ---------------------------------------------------------------------------
# The blinded survey: what participants see, and the key that unblinds it.

@dataclass(frozen=True)
class ShownStory:
    blinded_id: str
    text: str


@dataclass(frozen=True)
class Packet:
    label: str  # "P01": the participant slot, the same in every export format
    stories: tuple[ShownStory, ...]


@dataclass(frozen=True)
class Survey:
    """Everything participant-facing; holds no story id, setting, seed or model."""

    survey_id: str
    exemplar: ShownStory
    practice: tuple[ShownStory, ...]
    packets: tuple[Packet, ...]


def packet_label(index: int, count: int) -> str:
    return f"P{index + 1:0{max(2, len(str(count)))}d}"


def blind(selection: Selection, slots: list[Slot], n_participants: int,
          rng: np.random.Generator) -> tuple[Survey, pd.DataFrame, pd.DataFrame]:
    """Give every shown story a random id; return the survey, the key and the design table.

    The key has one row per blinded id (kind exemplar, practice or story); the
    design has one row per (participant, position) with the true story and setting.
    """
    shown: list[tuple[str, Story]] = [("exemplar", selection.exemplar)]
    shown += [("practice", story) for story in selection.practice]
    shown += [("story", story) for stories in selection.rated.values() for story in stories]
    survey_id, *ids = blinded_ids(len(shown) + 1, rng)
    blinded = {(kind, story.story_id): blinded_id for (kind, story), blinded_id in zip(shown, ids)}

    def show(kind: str, story: Story) -> ShownStory:
        return ShownStory(blinded[(kind, story.story_id)], story.text)

    packets = []
    design_rows = []
    for participant in range(n_participants):
        label = packet_label(participant, n_participants)
        mine = sorted((s for s in slots if s.participant == participant), key=lambda s: s.position)
        packets.append(Packet(label, tuple(show("story", s.story) for s in mine)))
        design_rows += [{"participant": label, "position": s.position + 1,
                         "blinded_id": blinded[("story", s.story.story_id)],
                         "story_id": s.story.story_id, "setting_id": s.setting_id} for s in mine]
    survey = Survey(survey_id, show("exemplar", selection.exemplar),
                    tuple(show("practice", story) for story in selection.practice), tuple(packets))
    key = pd.DataFrame([{"survey_id": survey_id, "blinded_id": blinded[(kind, story.story_id)], "kind": kind,
                         "story_id": story.story_id, "setting_id": story.setting_id} for kind, story in shown])
    return survey, key, pd.DataFrame(design_rows)
