"""The judge stage with the real embedded SmolLM2 in process (llama-cpp-python): judging, failures and retries,
resuming after a real SIGKILL, and the judge ratings flowing through ``analysis.report``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from analysis.criteria import CRITERION_NAMES
from analysis.judge.config import JudgeConfig, JudgeRunConfig, Structured
from analysis.judge.run import read_judgments, run_judges
from analysis.report import report_for_run
from analysis.synthetic import build_synthetic_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
EXEMPLAR = "Once upon a time a girl walked into the forest. She found a small house and a kind old woman."
STORIES = [
    "A fox found a lantern in the snow. It lit the way home for a lost owl, and the two became friends.",
    "The robot painted the sunset every evening until the town forgot it was a machine.",
    "A girl planted a seed in the cracked road. By spring the whole street was a garden.",
    "The old boat sailed once more, carrying the village children to see the whales.",
    "He wrote letters to the moon. One night the moon wrote back, in silver ink.",
    "The baker's bread rose so high it lifted the bakery into the clouds.",
]


def _write_inputs(folder: Path, stories=STORIES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "stories.jsonl"
    store.write_text("".join(json.dumps({"story_id": f"s{i}", "text": text, "setting": {"temperature": 0.5 + i / 2}})
                             + "\n" for i, text in enumerate(stories)))
    exemplar = folder / "exemplar.txt"
    exemplar.write_text(EXEMPLAR)
    return store, exemplar


def _judge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "analysis.judge", "progress=false", *args]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_embedded_judge_rates_three_stories_with_its_grammar_and_token_probabilities(tmp_path):
    store, exemplar = _write_inputs(tmp_path / "in", STORIES[:3])
    config = JudgeRunConfig(stories=str(store), exemplar=str(exemplar), out_dir=str(tmp_path / "out"), repeats=1,
                            progress=False)
    judges, outcomes, records, rubric = run_judges(config)
    assert len(records) == 3 and outcomes[0].stored == 3 and judges[0].structured == "grammar"
    for record in records:
        assert record["status"] == "ok" and record["rubric"] == rubric
        assert set(record["scores"]) == set(CRITERION_NAMES)
        assert all(1 <= v <= 5 and isinstance(v, int) for v in record["scores"].values())
        assert record["exemplar_position"] in ("before", "after") and record["prompt"].count(EXEMPLAR) == 1
        for criterion, value in record["expected"].items():  # SmolLM2 writes each digit as its own token
            assert 1 <= value["expected"] <= 5 and 0 < value["mass"] <= 1 + 1e-9, (criterion, value)
        assert record["participant_id"] == f"judge:llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf|{rubric}|r0"

    # The same judgments asked again, alone and in another order, are the same: they depend on their inputs.
    reversed_store = tmp_path / "reversed" / "stories.jsonl"
    reversed_store.parent.mkdir()
    reversed_store.write_text("".join(reversed(store.read_text().splitlines(keepends=True))))
    again = JudgeRunConfig(stories=str(reversed_store), exemplar=str(exemplar), out_dir=str(tmp_path / "again"),
                           repeats=1, progress=False)
    _, _, records_again, _ = run_judges(again)
    first = {r["judgment_id"]: (r["scores"], r["seed"], r["attempts"]) for r in records}
    assert first == {r["judgment_id"]: (r["scores"], r["seed"], r["attempts"]) for r in records_again}


def test_without_the_grammar_malformed_answers_are_retried_with_new_seeds_then_stored_as_failed(tmp_path):
    # The 135M model rarely writes the JSON object unaided: a real source of malformed answers.
    store, exemplar = _write_inputs(tmp_path / "in", STORIES[:2])
    judge = JudgeConfig(structured=Structured.off, top_logprobs=0, max_tokens=24)
    config = JudgeRunConfig(stories=str(store), exemplar=str(exemplar), out_dir=str(tmp_path / "out"), judge=judge,
                            max_attempts=2, progress=False)
    judges, outcomes, records, _ = run_judges(config)
    assert judges[0].structured == "none" and len(records) == 2
    for record in records:
        attempts = record["attempts"]
        assert len({a["seed"] for a in attempts}) == len(attempts)
        if record["status"] == "failed":
            assert len(attempts) == 2 and all(a["error_kind"] for a in attempts) and record["scores"] is None
        else:
            assert attempts[-1]["error_kind"] is None and all(a["error_kind"] for a in attempts[:-1])
    refused = sum(1 for r in records for a in r["attempts"] if a["error_kind"])
    assert sum(outcomes[0].errors.values()) == refused > 0
    # The command line finds them stored (nothing is asked again) and writes the tables.
    result = subprocess.run(_judge_command(f"stories={store}", f"exemplar={exemplar}", f"out_dir={tmp_path / 'out'}",
                                           "judge.structured=off", "judge.top_logprobs=0", "judge.max_tokens=24",
                                           "max_attempts=2"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ratings = pd.read_csv(tmp_path / "out" / "judge_ratings.csv")
    assert len(ratings) == 2 and ratings["status"].tolist().count("failed") == \
        sum(r["status"] == "failed" for r in records)
    report = (tmp_path / "out" / "judge_report.md").read_text()
    assert "answers_refused" in report and "0 made now, 2 already stored" in result.stderr


def test_a_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path):
    store, exemplar = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = (f"stories={store}", f"exemplar={exemplar}", f"out_dir={out}", "repeats=2")
    judgments = out / "judgments.jsonl"
    process = subprocess.Popen(_judge_command(*args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if judgments.exists() and judgments.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {r["judgment_id"]: r for r in read_judgments(judgments)}
    assert 3 <= len(before) < 12

    result = subprocess.run(_judge_command(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in judgments.read_text().splitlines() if line.strip()]
    ids = Counter(line["judgment_id"] for line in lines)
    assert len(ids) == 12 and max(ids.values()) == 1  # 6 stories x 2 repeats, each once
    after = {line["judgment_id"]: line for line in lines}
    assert all(after[key] == record for key, record in before.items())  # what was written stays as written
    assert f"{len(before)} already stored" in result.stderr and f"{12 - len(before)} made now" in result.stderr

    third = subprocess.run(_judge_command(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "0 made now, 12 already stored" in third.stderr
    assert [json.loads(line) for line in judgments.read_text().splitlines() if line.strip()] == lines


def test_judge_ratings_flow_through_the_report_labelled_as_judge_ratings(tmp_path):
    build_synthetic_run(tmp_path / "run", temperatures=(0.5, 1.0, 1.5), top_ps=(1.0,), stories_per_setting=1,
                              n_participants=None, seed=5)
    exemplar = tmp_path / "exemplar.txt"
    exemplar.write_text(EXEMPLAR)
    out = tmp_path / "judged"
    result = subprocess.run(_judge_command(f"stories={tmp_path / 'run'}", f"exemplar={exemplar}", f"out_dir={out}",
                                           "repeats=2"),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ratings = pd.read_csv(out / "judge_ratings.csv")
    assert len(ratings) == 6 and ratings["participant_id"].nunique() == 2
    path = report_for_run(tmp_path / "run", out / "judge_ratings.csv")
    text = path.read_text()
    assert "## Judge ratings" in text and "## Human ratings" not in text and "judge ratings: `" in text
    assert "All 6 judgments have scores." in text
    assert "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf" in text and "### Mixed-effects models" in text
