"""The judge stage against llama.cpp's own llama-server, for real: ``python -m analysis.judge judge=openai
judge.profile=llamacpp_server`` on three short stories, two repeats each.

The answer's JSON schema travels as llama-server's ``json_schema`` field, so every answer parses on its
first attempt; the run stores six judgments and the long ratings table; the same command again asks
nothing and leaves the judgments file as it was; one request at a time and four at a time plan the same
judgments with the same seeds. Each judgment asks for the top 20 alternatives of every token and
records the probability-weighted (G-Eval) scores; the alternatives themselves are not stored, so that the
sampled score's token is among them is checked by sending a stored judgment's request again. The server is the one ``scripts/serve llama-server`` starts (built
once per machine, cached); where it cannot be, the module skips and says why.
"""

from __future__ import annotations

import bisect
import itertools
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from analysis.criteria import CRITERION_NAMES, SCALE
from analysis.judge.answers import answer_schema, expected_scores, parse_answer
from analysis.judge.run import EXTRA_COLUMNS, RATINGS_COLUMNS, read_judgments
from experiments.backends.openai_profiles import profile_of
from experiments.servers.engines import SERVED_NAME
from tests.integration.served import REPO, ServedEngine, generate_env, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = "llamacpp_server"
TOP_LOGPROBS = 20  # conf/judge/openai.yaml's default
EXEMPLAR = "A girl walked into the forest. She found a small house and a kind old woman who gave her tea."
STORIES = [
    "A fox found a lantern in the snow. It lit the way home for a lost owl.",
    "The robot painted the sunset every evening until the town forgot it was a machine.",
    "A girl planted a seed in the cracked road. By spring the whole street was a garden.",
]
REPEATS = 2
JUDGMENTS = len(STORIES) * REPEATS


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    yield from serving("llama-server", tmp_path_factory, "--parallel", "4")  # built once per machine (cached)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    stories = folder / "stories.jsonl"
    stories.write_text("".join(json.dumps({"story_id": f"s{i}", "text": text, "setting": {"temperature": 0.5 + i}})
                               + "\n" for i, text in enumerate(STORIES)))
    exemplar = folder / "exemplar.txt"
    exemplar.write_text(EXEMPLAR)
    return stories, exemplar


def run_judge(server: ServedEngine, inputs: tuple[Path, Path], out: Path, *more: str) -> subprocess.CompletedProcess:
    """The judge stage as a researcher runs it, in a subprocess."""
    stories, exemplar = inputs
    command = [sys.executable, "-m", "analysis.judge", "progress=false", f"stories={stories}",
               f"exemplar={exemplar}", f"out_dir={out}", "judge=openai", f"judge.base_url={server.url}",
               f"judge.model={SERVED_NAME}", f"judge.profile={PROFILE}", f"repeats={REPEATS}", *more]
    result = subprocess.run(command, cwd=REPO, env=generate_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def judgments_table(out: Path) -> pd.DataFrame:
    """judge_report.md's table of judgments per judge, as it wrote its CSV."""
    return pd.read_csv(out / "tables" / "judgments.csv")


@pytest.fixture(scope="module")
def judged(llama, inputs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Six judgments, four requests at a time (judge.max_concurrency's default)."""
    out = tmp_path_factory.mktemp("judged")
    return out, run_judge(llama, inputs, out)


def records_of(out: Path) -> list[dict]:
    return sorted(read_judgments(out / "judgments.jsonl"), key=lambda r: (r["repeat"], r["story_id"]))


def test_every_answer_follows_the_schema_llama_server_was_sent(judged):
    out, _ = judged
    records = records_of(out)
    assert len(records) == JUDGMENTS and len({r["judgment_id"] for r in records}) == JUDGMENTS
    assert sorted((r["story_id"], r["repeat"]) for r in records) == [
        (f"s{i}", repeat) for i in range(len(STORIES)) for repeat in range(REPEATS)]
    for record in records:
        # The schema is enforced: each judgment is ok on its first attempt, its one answer the stored scores.
        assert record["status"] == "ok" and record["structured"] == "json_schema", record["attempts"]
        [attempt] = record["attempts"]
        assert attempt["error_kind"] is None and attempt["seed"] == record["seed"]
        assert parse_answer(attempt["answer"]).scores == record["scores"]
        assert set(record["scores"]) == set(CRITERION_NAMES)
        assert all(SCALE[0] <= value <= SCALE[1] for value in record["scores"].values())
        sent = record["sent_parameters"]
        assert sent["json_schema"] == answer_schema()  # llama-server's field, the object itself
        assert "response_format" not in sent and "grammar" not in sent
        assert sent["logprobs"] is True and sent["top_logprobs"] == TOP_LOGPROBS  # for the G-Eval score
        assert record["sampling"]["json_schema"] is True and record["sampling"]["top_logprobs"] == TOP_LOGPROBS
        assert sent["seed"] == record["seed"] and record["backend"] == "openai" and record["model"] == SERVED_NAME
        assert record["participant_id"].startswith(f"judge:openai:{SERVED_NAME}|")
    assert {r["exemplar_position"] for r in records} <= {"before", "after"}
    assert len({r["seed"] for r in records}) == JUDGMENTS


def test_the_probability_weighted_scores_recorded_lie_in_the_scale(judged):
    out, _ = judged
    weighted = [value for record in records_of(out) for value in (record["expected"] or {}).values()
                if value["expected"] is not None]
    assert weighted, "no judgment has a probability-weighted score"
    for value in weighted:
        assert SCALE[0] <= value["expected"] <= SCALE[1] and 0 < value["mass"] <= 1 + 1e-9, value
    expected = pd.read_csv(out / "judge_ratings_expected.csv")
    assert len(expected) == JUDGMENTS and list(expected.columns) == RATINGS_COLUMNS + EXTRA_COLUMNS


def test_every_judgment_has_all_four_probability_weighted_scores(judged):
    out, _ = judged
    for record in records_of(out):
        assert set(record["expected"] or {}) == set(CRITERION_NAMES)
        assert all(value["expected"] is not None for value in record["expected"].values()), record["attempts"]
    expected = pd.read_csv(out / "judge_ratings_expected.csv")
    assert expected[list(CRITERION_NAMES)].notna().all().all()


def post_chat(server: ServedEngine, body: dict) -> dict:
    request = urllib.request.Request(f"{server.url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def test_a_stored_judgments_request_with_alternatives_gives_its_answer_and_scores_in_the_scale(llama, judged):
    """The G-Eval path on the server's real tokens: a stored judgment's body, as it was sent, sent again."""
    out, _ = judged
    for record in records_of(out):
        body = {"model": SERVED_NAME, "messages": json.loads(record["prompt"]), **record["sent_parameters"]}
        assert body["logprobs"] is True and body["top_logprobs"] == TOP_LOGPROBS
        choice = post_chat(llama, body)["choices"][0]
        answer = choice["message"]["content"]
        # Alone now, in a batch of four then: not asserted equal to the stored answer (batch_invariant unknown).
        assert answer_schema()["required"] == list(parse_answer(answer).scores)
        tokens = [{"token": item["token"], "logprob": item["logprob"],
                   "top": [[top["token"], top["logprob"]] for top in item["top_logprobs"]]}
                  for item in choice["logprobs"]["content"]]
        # The tokens hold the answer, but for what llama-server tidies off the content: whitespace after the
        # object, a ```json fence around it.
        joined = "".join(token["token"] for token in tokens)
        assert joined.count(answer.strip()) == 1, (answer, joined)
        parsed = parse_answer(joined)
        starts = list(itertools.accumulate((len(token["token"]) for token in tokens), initial=0))
        for criterion, score in parsed.scores.items():
            token = tokens[bisect.bisect_right(starts, parsed.score_offsets[criterion]) - 1]
            assert token["token"].strip() == str(score), (criterion, answer)  # the score is a token of its own
            # The sampled score's token is among the alternatives the server listed, not appended by us.
            assert token["token"] in [text for text, _ in token["top"]], (criterion, token)
            assert len(token["top"]) == TOP_LOGPROBS
        expected = expected_scores(parsed, tokens)
        for criterion, value in expected.items():
            assert SCALE[0] <= value["expected"] <= SCALE[1] and 0 < value["mass"] <= 1 + 1e-9, (criterion, value)


def test_judge_ratings_are_the_long_table_one_row_per_judgment(judged):
    out, _ = judged
    ratings = pd.read_csv(out / "judge_ratings.csv")
    assert list(ratings.columns) == RATINGS_COLUMNS + EXTRA_COLUMNS
    assert len(ratings) == JUDGMENTS and set(ratings["rater_kind"]) == {"judge"}
    assert set(ratings["status"]) == {"ok"} and ratings[list(CRITERION_NAMES)].notna().all().all()
    assert ratings["participant_id"].nunique() == REPEATS  # one rater per repeat
    records = {r["judgment_id"]: r for r in records_of(out)}
    for row in ratings.itertuples():
        assert {c: getattr(row, c) for c in CRITERION_NAMES} == records[row.judgment_id]["scores"]


def test_the_same_command_again_makes_no_judgment_and_leaves_the_file_as_it_was(llama, inputs, judged):
    out, first = judged
    before = (out / "judgments.jsonl").read_bytes()
    assert judgments_table(out)["made_now"].tolist() == [JUDGMENTS]
    again = run_judge(llama, inputs, out)
    assert (out / "judgments.jsonl").read_bytes() == before
    table = judgments_table(out)
    assert table["made_now"].tolist() == [0] and table["already_stored"].tolist() == [JUDGMENTS]
    assert f"0 made now, {JUDGMENTS} already stored" in again.stderr
    assert f"{JUDGMENTS} made now, 0 already stored" in first.stderr


def test_one_request_at_a_time_plans_the_same_judgments_with_the_same_seeds(llama, inputs, judged, tmp_path):
    out, _ = judged
    alone = tmp_path / "alone"
    run_judge(llama, inputs, alone, "judge.max_concurrency=1")
    four, one = records_of(out), records_of(alone)
    assert [r["judgment_id"] for r in one] == [r["judgment_id"] for r in four]
    assert [r["seed"] for r in one] == [r["seed"] for r in four]
    assert [r["prompt"] for r in one] == [r["prompt"] for r in four]
    if profile_of(PROFILE).batch_invariant is True:
        assert [r["scores"] for r in one] == [r["scores"] for r in four]
    # Otherwise the scores may differ with the batch: the profile does not claim llama-server is batch-invariant.
