"""Judge every story: plan the judgments, ask the missing ones, store each as soon as it is made.

A judgment is one (judge, rubric, story, repeat). Its id hashes those and the
texts judged, its seed hashes the same plus the attempt, so a judgment
depends only on its own inputs: not on the order, the batch or the other
judges of a run. Where the exemplar stands and the order in which each
repeat goes through the stories are drawn from seeded hashes too, and
recorded with the judgment.

Judgments are appended to ``judgments.jsonl`` one by one (flushed and
fsynced, under a lock: ``experiments.store``), so a run killed at any point
loses at most the judgment being written; the same command resumes it and
never asks again for a stored judgment. An answer that does not parse, or
holds a score outside the scale, is asked again with the next attempt's
seed, up to ``max_attempts``; then the judgment is stored as failed, with
every raw answer. A request the server never answered (after the backend's
own retries) is not stored: the next run asks it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from analysis.criteria import CRITERION_NAMES
from analysis.judge.answers import AnswerError, answer_schema, expected_scores, parse_answer
from analysis.judge.config import JudgeConfig, JudgeInputError, JudgeRunConfig, Structured
from analysis.judge.rubric import EXEMPLAR_POSITIONS, judge_prompt, rubric_version
from experiments.backends import Backend, FailedStory, StoryRequest, backend_class
from experiments.config import ConfigError, PromptConfig, SamplingConfig
from experiments.files import utc_now
from experiments.identity import canonical_json, setting_of
from experiments.manifest import harness_version
from experiments.store import StoreError, StoryStore, unique_stories

log = logging.getLogger(__name__)

JUDGMENTS_FILE = "judgments.jsonl"
PROMPT_ID = "judge"


def _digest(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:length]


def _seed(*parts: Any) -> int:
    return int(_digest("judge-seed", *parts), 16) % (2**31 - 1)  # below 2**31: every runtime takes it


@dataclass
class Judge:
    """One judge of a run: its config, backend (not loaded until a judgment is missing) and answer decoding."""

    config: JudgeConfig
    backend: Backend
    sampling: SamplingConfig
    structured: str  # how the JSON schema is enforced: "grammar", "response_format", "json_schema" or "none"
    name: str
    key: str  # digest of what makes its judgments what they are: backend, model, variant, decoding

    def rater_id(self, rubric: str, repeat: int) -> str:
        return f"judge:{self.name}|{rubric}|r{repeat}"


def _accepts(backend_type: type[Backend], backend_config: Any, sampling: SamplingConfig) -> bool:
    try:
        backend_type.check_supported(sampling, backend_config)
    except ConfigError:
        return False
    return True


def _structured_kind(config: JudgeConfig) -> str:
    """How the schema travels: a grammar in process, else the request field the server's profile sends it in."""
    if config.backend != "openai":
        return "grammar"
    from experiments.backends.openai_profiles import profile_of

    return profile_of(config.profile).fields["json_schema"].name


def build_judge(config: JudgeConfig, index: int) -> Judge:
    """Check a judge's config and decide what it can enforce and report, before any model loads."""
    backend_config = config.backend_config()
    backend_type = backend_class(config.backend)
    base = dict(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens)
    schema = json.dumps(answer_schema())
    sampling = SamplingConfig(**base)
    structured = "none"
    if config.structured != Structured.off:
        with_schema = SamplingConfig(**base, json_schema=schema)
        if _accepts(backend_type, backend_config, with_schema):
            sampling, structured = with_schema, _structured_kind(config)
        elif config.structured == Structured.on:
            raise JudgeInputError(f"judge {index} (backend {config.backend}): judge.structured=on, but this backend "
                                  "cannot enforce a JSON schema; use judge.structured=auto (answers are then parsed "
                                  "strictly) or another backend or profile")
    if config.top_logprobs:
        with_alternatives = dataclasses.replace(sampling, top_logprobs=config.top_logprobs)
        if _accepts(backend_type, backend_config, with_alternatives):
            sampling = with_alternatives
        else:
            log.info("judge %d (backend %s) cannot return token alternatives: no probability-weighted score",
                     index, config.backend)
    backend = backend_type(backend_config)
    backend_type.check_prompt(PromptConfig(id=PROMPT_ID, messages=[{"role": "user", "content": "x"}]),
                              backend_config)
    model = config.model if config.backend == "openai" else config.model_file if config.model_path is None \
        else Path(config.model_path).name
    name = config.name or f"{config.backend}:{model}"
    identity = backend.identity()
    key = _digest("judge", config.backend, identity.get("sha256"), backend.variant(), model, setting_of(sampling),
                  structured)
    return Judge(config, backend, sampling, structured, name, key)


@dataclass(frozen=True)
class PlannedJudgment:
    judgment_id: str
    judge: int  # index in the run's judges
    story_id: str
    repeat: int
    order_index: int  # place of the story in this repeat's judging order
    exemplar_position: str

    def seed(self, attempt: int) -> int:
        return _seed(self.judgment_id, attempt)


def plan_judgments(judges: list[Judge], stories: pd.DataFrame, exemplar: str, rubric: str, repeats: int,
                   base_seed: int) -> list[PlannedJudgment]:
    """Every judgment of the run, in judging order: per judge and repeat, the stories in a seeded order."""
    exemplar_digest = _digest("text", exemplar)
    texts = dict(zip(stories["story_id"], stories["text"]))
    planned = []
    for index, judge in enumerate(judges):
        for repeat in range(repeats):
            order = sorted(texts)
            random.Random(_seed(judge.key, rubric, repeat, base_seed, "order")).shuffle(order)
            for position, story_id in enumerate(order):
                judgment_id = _digest("judgment", judge.key, rubric, story_id, _digest("text", texts[story_id]),
                                      exemplar_digest, repeat, base_seed)
                side = EXEMPLAR_POSITIONS[_seed(judgment_id, "exemplar") % 2]
                planned.append(PlannedJudgment(judgment_id, index, story_id, repeat, position, side))
    return planned


@dataclass
class Attempt:
    seed: int
    answer: Optional[str]
    error_kind: Optional[str] = None  # AnswerError.kind, or "server" for a request that failed
    error: Optional[str] = None


@dataclass
class JudgeOutcome:
    stored: int = 0
    failed: int = 0  # stored as failed after max_attempts
    unanswered: int = 0  # the server never answered: not stored, asked again next run
    retried: int = 0  # answers asked again
    already: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error kind -> answers


def judgment_record(judge: Judge, planned: PlannedJudgment, rubric: str, attempts: list[Attempt],
                    story: Any, scores: Optional[dict[str, int]], expected: Optional[dict[str, dict]],
                    prompt: str) -> dict[str, Any]:
    identity = judge.backend.identity()
    return {
        "judgment_id": planned.judgment_id,
        "status": "ok" if scores is not None else "failed",
        "judge": judge.name,
        "judge_key": judge.key,
        "rubric": rubric,
        "story_id": planned.story_id,
        "repeat": planned.repeat,
        "participant_id": judge.rater_id(rubric, planned.repeat),
        "seed": attempts[-1].seed,
        "attempts": [dataclasses.asdict(attempt) for attempt in attempts],
        "scores": scores,
        "expected": expected,
        "exemplar_position": planned.exemplar_position,
        "order_index": planned.order_index,
        "structured": judge.structured,
        "backend": judge.backend.name,
        "model": identity.get("model"),
        "model_sha256": identity.get("sha256"),
        "variant": judge.backend.variant(),
        "sampling": setting_of(judge.sampling) | {"json_schema": judge.sampling.json_schema is not None},
        "prompt": prompt,
        "n_tokens": getattr(story, "n_tokens", None),
        "finish_reason": getattr(story, "finish_reason", None),
        "latency_s": round(getattr(story, "latency_s", 0.0), 4),
        "sent_parameters": getattr(story, "sent_parameters", None),
        "created_at": utc_now(),
        "harness_version": harness_version(),
    }


def read_judgments(path: Path) -> list[dict[str, Any]]:
    """The stored judgments, first copy of an id wins (a torn last line is skipped and reported)."""
    if not path.exists():
        return []
    try:
        return list(unique_stories(path, key="judgment_id"))
    except StoreError as error:
        raise JudgeInputError(str(error)) from None


def _answer(text: str, story: Any) -> tuple[dict[str, int], Optional[dict[str, dict]]]:
    parsed = parse_answer(text)
    alternatives = getattr(story, "token_alternatives", None)
    expected = expected_scores(parsed, alternatives) if alternatives else None
    return parsed.scores, expected


def judge_stories(judges: list[Judge], planned: list[PlannedJudgment], stories: pd.DataFrame, exemplar: str,
                  rubric: str, store: StoryStore, max_attempts: int, progress: bool = True) -> list[JudgeOutcome]:
    """Ask every planned judgment not yet in ``store``; return what happened per judge."""
    from tqdm import tqdm

    texts = dict(zip(stories["story_id"], stories["text"]))
    done = store.existing_ids()
    outcomes = [JudgeOutcome() for _ in judges]
    missing = [p for p in planned if p.judgment_id not in done]
    for p in planned:
        if p.judgment_id in done:
            outcomes[p.judge].already += 1
    bar = tqdm(total=len(missing), unit="judgment", desc="judge", disable=not progress, dynamic_ncols=True)
    try:
        for index, judge in enumerate(judges):
            pending = [p for p in missing if p.judge == index]
            if not pending:
                continue  # nothing to ask: the model is never loaded
            judge.backend.load()
            history: dict[str, list[Attempt]] = {p.judgment_id: [] for p in pending}
            prompts = {p.judgment_id: judge.backend.prompt_text(PromptConfig(
                id=PROMPT_ID, messages=judge_prompt(texts[p.story_id], exemplar, p.exemplar_position).messages))
                for p in pending}
            for attempt in range(max_attempts):
                if not pending:
                    break
                by_request = {f"{p.judgment_id}:{attempt}": p for p in pending}
                requests = [StoryRequest(story_id=request_id, sample_index=attempt, seed=p.seed(attempt),
                                         prompt=prompts[p.judgment_id]) for request_id, p in by_request.items()]
                again = []
                for story in judge.backend.generate(requests, judge.sampling):
                    p = by_request[story.request.story_id]
                    attempts = history[p.judgment_id]
                    if isinstance(story, FailedStory):
                        outcomes[index].unanswered += 1
                        bar.update(1)
                        continue
                    try:
                        scores, expected = _answer(story.text, story)
                        attempts.append(Attempt(story.request.seed, story.text))
                    except AnswerError as error:
                        attempts.append(Attempt(story.request.seed, story.text, error.kind, str(error)))
                        outcomes[index].errors[error.kind] = outcomes[index].errors.get(error.kind, 0) + 1
                        if attempt + 1 < max_attempts:
                            outcomes[index].retried += 1
                            again.append(p)
                            continue
                        scores, expected = None, None
                    store.append(judgment_record(judge, p, rubric, attempts, story, scores, expected,
                                                 prompts[p.judgment_id]))
                    outcomes[index].stored += 1
                    outcomes[index].failed += scores is None
                    bar.update(1)
                again_ids = {p.judgment_id for p in again}
                pending = [p for p in pending if p.judgment_id in again_ids]  # kept in judging order
    finally:
        bar.close()
    return outcomes


# ---------------------------------------------------------------- the ratings tables

RATINGS_COLUMNS = ["story_id", "participant_id", *CRITERION_NAMES]
EXTRA_COLUMNS = ["rater_kind", "judge", "rubric", "repeat", "status", "judgment_id", "exemplar_position",
                 "order_index"]


def ratings_frame(records: list[dict[str, Any]], score_kind: str = "sampled") -> pd.DataFrame:
    """The long ratings table of the judgments: one row per judgment, failed ones with empty scores.

    ``score_kind`` "sampled" takes the scores the judge wrote; "expected" the probability-weighted
    ones (empty where the backend gave no token alternatives, or the score shared its token).
    """
    rows = []
    for record in records:
        row = {"story_id": record["story_id"], "participant_id": record["participant_id"]}
        for criterion in CRITERION_NAMES:
            if score_kind == "sampled":
                value = (record["scores"] or {}).get(criterion)
            else:
                value = ((record.get("expected") or {}).get(criterion) or {}).get("expected")
            row[criterion] = math.nan if value is None else float(value)
        row.update({"rater_kind": "judge", "judge": record["judge"], "rubric": record["rubric"],
                    "repeat": record["repeat"], "status": record["status"], "judgment_id": record["judgment_id"],
                    "exemplar_position": record["exemplar_position"], "order_index": record["order_index"]})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RATINGS_COLUMNS + EXTRA_COLUMNS)
    return frame.sort_values(["judge", "repeat", "story_id"], kind="stable").reset_index(drop=True)


def answers_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every raw answer of every attempt, for reading what the judges wrote."""
    rows = [{"judgment_id": record["judgment_id"], "judge": record["judge"], "rubric": record["rubric"],
             "story_id": record["story_id"], "repeat": record["repeat"], "attempt": number,
             "seed": attempt["seed"], "error_kind": attempt["error_kind"], "error": attempt["error"],
             "answer": attempt["answer"]}
            for record in records for number, attempt in enumerate(record["attempts"])]
    return pd.DataFrame(rows, columns=["judgment_id", "judge", "rubric", "story_id", "repeat", "attempt", "seed",
                                       "error_kind", "error", "answer"])


def run_judges(config: JudgeRunConfig) -> tuple[list[Judge], list[JudgeOutcome], list[dict[str, Any]], str]:
    """Check everything, judge what is missing, and return the judges, outcomes, this run's records and rubric."""
    from analysis.judge.stories import load_exemplar, load_stories

    stories = load_stories(config.stories)
    exemplar = load_exemplar(config.exemplar)
    judges = [build_judge(judge_config, index) for index, judge_config in enumerate(config.all_judges())]
    names = [judge.name for judge in judges]
    if len(set(names)) != len(names):
        raise JudgeInputError(f"two judges share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                              "give each a judge.name")
    rubric = rubric_version()
    planned = plan_judgments(judges, stories, exemplar, rubric, config.repeats, config.seed)
    store = StoryStore(config.out_dir, JUDGMENTS_FILE, key="judgment_id")
    try:
        outcomes = judge_stories(judges, planned, stories, exemplar, rubric, store, config.max_attempts,
                                 config.progress)
    finally:
        for judge in judges:
            judge.backend.close()
    wanted = {p.judgment_id for p in planned}
    records = [record for record in read_judgments(store.path) if record["judgment_id"] in wanted]
    return judges, outcomes, records, rubric
