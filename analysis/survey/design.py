"""Which stories go into the survey, and who rates which story in which position.

Selection: per setting, a seeded sample of distinct story texts; the
exemplar; and practice stories drawn from what is left.

Assignment: a Williams design over settings. Row ``r`` of a Williams square
orders the settings so that, across the square, every setting sits once in
every position and (for complete squares) follows every other setting equally
often; for an odd number of settings the square and its mirror image are used
together. Participant ``p`` gets one row; position ``j`` of the packet shows a
story of the setting at ``row[j mod S]``. Whole cycles of rows are handed out
first, and the remaining participants get rows spread evenly around the
square. Because the first ``k`` entries of every Williams row form a cyclic
interval of settings, evenly spaced rows cover every setting equally often
(plus or minus one). Within a setting, its slots are dealt round-robin to its
stories.

The result, for any size: every story is rated by the same number of
participants plus or minus one, every setting appears equally often plus or
minus one, and every setting appears equally often in every position plus or
minus one (all three when every setting has the same number of stories; with
``short_settings=repeat`` the stories of a short setting are rated more often,
and the report says so). No packet holds the same story twice, and no packet
holds a setting twice unless it is longer than the number of settings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.survey.config import ShortSettings, SurveyError

# Fields of the story store that are not sampling parameters of the setting.
STORY_FIELDS = {
    "story_id", "setting_id", "seed", "sample_index", "backend", "model", "model_sha256", "prompt_id", "prompt",
    "messages",
    "text", "n_tokens", "finish_reason", "token_logprobs", "latency_s", "created_at", "harness_version",
}


@dataclass(frozen=True)
class Story:
    story_id: str
    setting_id: str
    text: str


@dataclass
class Selection:
    """The stories chosen from a run, before anyone is assigned."""

    exemplar: Story
    rated: dict[str, list[Story]]  # setting_id -> its chosen stories, settings in sorted order
    practice: list[Story]
    notes: list[str] = field(default_factory=list)  # decisions worth reporting (short settings, ...)


@dataclass(frozen=True)
class Slot:
    participant: int  # 0-based
    position: int  # 0-based
    setting_id: str
    story: Story


# ---------------------------------------------------------------------------
# Selection


def _distinct_texts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct text (whitespace-trimmed), keeping the first in store order."""
    key = frame["text"].str.strip()
    return frame.loc[~key.duplicated()]


def pick_exemplar(stories: pd.DataFrame, exemplar_text: str | None) -> Story:
    """The given exemplar text, or the run's lowest-temperature story (lowest sample_index first)."""
    if exemplar_text is not None:
        if not exemplar_text.strip():
            raise SurveyError("exemplar: the exemplar file is empty")
        return Story(story_id="", setting_id="", text=exemplar_text.strip())  # not from the run
    if "temperature" not in stories.columns or stories["temperature"].isna().all():
        raise SurveyError("exemplar: the run has no temperature column to take the lowest-temperature story "
                          "from; pass exemplar=FILE (a text file with the exemplar story)")
    candidates = stories.loc[stories["temperature"].notna()].copy()
    candidates["_order"] = candidates["sample_index"] if "sample_index" in candidates else 0
    candidates = candidates.sort_values(["temperature", "_order", "story_id"], kind="stable")
    row = candidates.iloc[0]
    return Story(story_id=str(row["story_id"]), setting_id=str(row["setting_id"]), text=str(row["text"]).strip())


def select_stories(
    stories: pd.DataFrame,
    stories_per_setting: int,
    practice: int,
    short_settings: ShortSettings,
    rng: np.random.Generator,
    exemplar_text: str | None = None,
    source: str = "stories",
) -> Selection:
    """Choose the exemplar, ``stories_per_setting`` distinct stories per setting, and the practice stories."""
    missing = [c for c in ("story_id", "setting_id", "text") if c not in stories.columns]
    if missing:
        raise SurveyError(f"{source}: missing field(s) {', '.join(missing)}; the story store contract needs "
                          "story_id, setting_id and text")
    if stories.empty:
        raise SurveyError(f"{source}: no stories")
    frame = stories.copy()
    frame["story_id"] = frame["story_id"].astype(str)
    frame["setting_id"] = frame["setting_id"].astype(str)
    frame["text"] = frame["text"].fillna("").astype(str)
    if "sample_index" in frame:
        frame = frame.sort_values(["setting_id", "sample_index", "story_id"], kind="stable")
    else:
        frame = frame.sort_values(["setting_id", "story_id"], kind="stable")

    exemplar = pick_exemplar(frame, exemplar_text)
    pool = frame.loc[(frame["story_id"] != exemplar.story_id) & (frame["text"].str.strip() != "")]

    notes: list[str] = []
    rated: dict[str, list[Story]] = {}
    short: dict[str, int] = {}
    for setting_id, group in pool.groupby("setting_id", sort=True):
        distinct = _distinct_texts(group)
        take = min(stories_per_setting, len(distinct))
        if take < stories_per_setting:
            short[setting_id] = len(distinct)
        chosen = distinct.iloc[np.sort(rng.choice(len(distinct), size=take, replace=False))]
        rated[setting_id] = [Story(r.story_id, r.setting_id, r.text.strip()) for r in chosen.itertuples()]
    for setting_id in sorted(set(frame["setting_id"]) - set(rated)):
        short[setting_id] = 0

    if short:
        listing = ", ".join(f"{s} ({n} distinct)" for s, n in sorted(short.items()))
        if short_settings == ShortSettings.error:
            raise SurveyError(
                f"{source}: setting(s) with fewer than stories_per_setting={stories_per_setting} distinct, "
                f"non-empty stories (the exemplar not counted): {listing}. Lower stories_per_setting, or set "
                "short_settings=drop (leave them out) or short_settings=repeat (rate their stories more often)")
        if short_settings == ShortSettings.drop:
            for setting_id in short:
                rated.pop(setting_id, None)
            notes.append(f"short_settings=drop: left out {listing}")
        else:
            rated = {s: v for s, v in rated.items() if v}
            notes.append(f"short_settings=repeat: kept {listing}; their stories are rated more often")
    if not rated:
        raise SurveyError(f"{source}: no setting has a story to rate"
                          + (f" ({notes[-1]}); lower stories_per_setting={stories_per_setting}" if notes else ""))

    used = {story.story_id for stories_ in rated.values() for story in stories_}
    practice_stories = _pick_practice(pool.loc[~pool["story_id"].isin(used)], practice, rng, source,
                                      shown_texts={exemplar.text} | {s.text for v in rated.values() for s in v})
    return Selection(exemplar=exemplar, rated=rated, practice=practice_stories, notes=notes)


def _pick_practice(left: pd.DataFrame, count: int, rng: np.random.Generator, source: str,
                   shown_texts: set[str]) -> list[Story]:
    """``count`` stories whose text is shown nowhere else, from as many different settings as possible."""
    if count == 0:
        return []
    left = _distinct_texts(left.loc[~left["text"].str.strip().isin(shown_texts)])
    if len(left) < count:
        raise SurveyError(f"{source}: only {len(left)} stories are left for practice after choosing the rated "
                          f"ones; practice={count} needs more (lower practice or stories_per_setting)")
    settings = sorted(left["setting_id"].unique())
    order = [settings[i] for i in rng.permutation(len(settings))]
    chosen: list[Story] = []
    by_setting = {s: left.loc[left["setting_id"] == s] for s in settings}
    taken: set[str] = set()
    while len(chosen) < count:  # one per setting per round, so practice spans settings
        for setting_id in order:
            group = by_setting[setting_id].loc[~by_setting[setting_id]["story_id"].isin(taken)]
            if group.empty or len(chosen) == count:
                continue
            row = group.iloc[int(rng.integers(len(group)))]
            taken.add(row["story_id"])
            chosen.append(Story(str(row["story_id"]), str(row["setting_id"]), str(row["text"]).strip()))
    return chosen


# ---------------------------------------------------------------------------
# Assignment


def williams_rows(n: int) -> list[list[int]]:
    """The rows of a Williams design of order n (n rows when n is even, 2n when odd)."""
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    square = [[(value + r) % n for value in first] for r in range(n)]
    if n % 2 == 0:
        return square
    mirror = [[(value + r) % n for value in reversed(first)] for r in range(n)]
    return square + mirror


def _evenly_spaced(count: int, size: int, offset: int) -> list[int]:
    """``count`` distinct indices spread evenly around a circle of ``size`` (count <= size)."""
    return [(i * size // count + offset) % size for i in range(count)]


def assign_rows(n_participants: int, n_settings: int, rng: np.random.Generator) -> list[list[int]]:
    """One Williams row per participant, in random participant order."""
    rows = williams_rows(n_settings)
    cycles, rest = divmod(n_participants, len(rows))
    chosen = [row for _ in range(cycles) for row in rows]
    if rest:
        squares = [rows[:n_settings], rows[n_settings:]] if len(rows) > n_settings else [rows]
        if len(squares) == 2 and rest > n_settings:
            first = int(rng.integers(2))
            chosen += squares[first]
            square, count = squares[1 - first], rest - n_settings
        else:
            square, count = squares[int(rng.integers(len(squares)))], rest
        offset = int(rng.integers(n_settings))
        chosen += [square[i] for i in _evenly_spaced(count, n_settings, offset)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def assign(selection: Selection, n_participants: int, per_participant: int,
           rng: np.random.Generator) -> list[Slot]:
    """Packets: ``per_participant`` stories for each of ``n_participants`` participants."""
    settings = list(selection.rated)  # sorted setting ids
    n_stories = sum(len(stories) for stories in selection.rated.values())
    if n_participants * per_participant < n_stories:
        raise SurveyError(
            f"{n_participants} participants x {per_participant} stories = {n_participants * per_participant} "
            f"ratings cannot rate each of the {n_stories} chosen stories ({len(settings)} settings) even once; "
            "lower stories_per_setting or raise participants or stories_per_participant")
    labels = [settings[i] for i in rng.permutation(len(settings))]  # which setting plays which design symbol
    rows = assign_rows(n_participants, len(settings), rng)

    # Settings per slot, in participant-then-position order.
    plan = [(p, j, labels[rows[p][j % len(settings)]]) for p in range(n_participants) for j in range(per_participant)]
    largest_share = Counter((p, s) for p, _, s in plan)
    for (p, setting_id), times in largest_share.items():
        if times > len(selection.rated[setting_id]):
            raise SurveyError(
                f"a packet of {per_participant} stories needs {times} different stories of setting {setting_id}, "
                f"which has {len(selection.rated[setting_id])}; raise stories_per_setting or lower "
                "stories_per_participant")

    # Deal each setting's slots round-robin over its stories (in a random order).
    decks = {s: [stories[i] for i in rng.permutation(len(stories))] for s, stories in selection.rated.items()}
    dealt: Counter[str] = Counter()
    slots = []
    for p, j, setting_id in plan:
        deck = decks[setting_id]
        slots.append(Slot(p, j, setting_id, deck[dealt[setting_id] % len(deck)]))
        dealt[setting_id] += 1
    return slots


def balance_report(slots: list[Slot], selection: Selection) -> dict:
    """Counts that show the balance of a design (min and max of each kind of count)."""
    per_story = Counter(slot.story.story_id for slot in slots)
    for stories in selection.rated.values():
        for story in stories:
            per_story.setdefault(story.story_id, 0)
    per_setting = Counter(slot.setting_id for slot in slots)
    positions = sorted({slot.position for slot in slots})
    per_cell = Counter((slot.setting_id, slot.position) for slot in slots)
    cells = [per_cell.get((s, j), 0) for s in selection.rated for j in positions]

    def spread(values) -> dict:
        values = list(values)
        return {"min": int(min(values)), "max": int(max(values))}

    return {
        "ratings_per_story": spread(per_story.values()),
        "ratings_per_setting": spread(per_setting.values()),
        "ratings_per_setting_and_position": spread(cells),
        "stories": len(per_story),
        "settings": len(selection.rated),
        "notes": list(selection.notes),
    }
