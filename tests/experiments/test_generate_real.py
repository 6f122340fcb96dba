"""The generate stage on the real embedded model (SmolLM2-135M-Instruct GGUF).

These load a real model and generate real text, in real subprocesses where
the command line is what is under test; settings are tiny to stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from experiments.config import GenerateConfig, LlamaCppBackendConfig, PromptConfig, SamplingConfig
from experiments.run import run_generation
from experiments.store import read_stories

from .conftest import REPO, run_generate

pytestmark = pytest.mark.slow

CONTRACT_FIELDS = {"story_id", "setting_id", "setting", "seed", "sample_index", "backend", "model", "model_sha256",
                   "prompt_id", "prompt", "messages", "text", "n_tokens", "finish_reason", "token_logprobs",
                   "latency_s", "created_at", "harness_version"}


def stories_of(directory) -> list[dict]:
    return read_stories(directory / "stories.jsonl")


def test_demo_smoke_run_writes_the_contract_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = run_generate("experiment=demo", "sampling.n=2", "sampling.max_tokens=12", f"out_dir={out}")
    stories = stories_of(out)
    assert len(stories) == 14  # 7 temperatures x 2
    temperatures = Counter(story["setting"]["temperature"] for story in stories)
    assert len(temperatures) == 7 and set(temperatures.values()) == {2}
    for story in stories:
        assert CONTRACT_FIELDS <= set(story)
        assert story["backend"] == "hf" and story["setting"]["top_k"] == 50
        assert story["prompt"].endswith("Here it is:\n\n")
        assert 1 <= story["n_tokens"] <= 12 and len(story["token_logprobs"]) == story["n_tokens"]
        assert all(value <= 0 for value in story["token_logprobs"])
        assert story["finish_reason"] in ("stop", "length")
    job_dirs = sorted((out / "jobs").iterdir())
    assert len(job_dirs) == 7
    manifest = json.loads((job_dirs[0] / "manifest.json").read_text())
    assert len(manifest["model"]["sha256"]) == 64 and manifest["runs"][0]["finished_at"]
    assert manifest["runs"][0]["packages"]["torch"] == "2.13.0+cpu" or manifest["runs"][0]["packages"]["torch"].startswith("2.13.0")
    assert "sampling:" in (job_dirs[0] / "config.yaml").read_text()
    assert "14 generated" in first.stderr

    again = run_generate("experiment=demo", "sampling.n=2", "sampling.max_tokens=12", f"out_dir={out}")
    assert "14 were already stored, 0 generated" in again.stderr
    assert len(stories_of(out)) == 14


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_the_same_config_regenerates_byte_identical_stories(tmp_path, backend):
    args = [f"backend={backend}", "sampling.temperature=1.0", "sampling.top_k=50", "sampling.n=3",
            "sampling.max_tokens=16"]
    run_generate(*args, f"out_dir={tmp_path / 'a'}")
    run_generate(*args, f"out_dir={tmp_path / 'b'}")
    first, second = stories_of(tmp_path / "a"), stories_of(tmp_path / "b")
    key = lambda story: story["sample_index"]  # noqa: E731
    assert [(s["story_id"], s["seed"], s["text"], s["token_logprobs"]) for s in sorted(first, key=key)] == \
           [(s["story_id"], s["seed"], s["text"], s["token_logprobs"]) for s in sorted(second, key=key)]
    assert len({story["text"] for story in first}) > 1  # sampled stories differ from one another


def test_resume_after_sigkill_completes_with_no_duplicates(tmp_path):
    out = tmp_path / "killed"
    args = ["backend=llamacpp", "sampling.temperature=1.0", "sampling.n=10", "sampling.max_tokens=64",
            f"out_dir={out}", "progress=false"]
    process = subprocess.Popen([sys.executable, "-m", "experiments.generate", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = out / "stories.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if store.exists() and store.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = store.read_bytes().count(b"\n")
    assert 3 <= written < 10, "the process must be killed mid-sweep"
    # As if the kill had landed mid-write: a torn last line.
    with open(store, "ab") as handle:
        handle.write(b'{"story_id": "torn-by-kill", "text": "half a sto')

    resumed = run_generate(*args)
    assert "torn" in resumed.stderr
    stories = stories_of(out)
    assert sorted(story["sample_index"] for story in stories) == list(range(10))
    assert len({story["story_id"] for story in stories}) == 10
    assert f"{written} were already stored, {10 - written} generated" in resumed.stderr
    assert (out / "stories.jsonl.torn").exists()


def test_multirun_sweep_lands_in_one_store_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    args = ["-m", "backend=llamacpp", "sampling.temperature=0.5,1.0", "sampling.top_p=0.9,1.0", "sampling.n=2",
            "sampling.max_tokens=6", f"out_dir={out}"]
    run_generate(*args)
    stories = stories_of(out)
    assert len(stories) == 8
    assert Counter((s["setting"]["temperature"], s["setting"]["top_p"]) for s in stories) == {
        (0.5, 0.9): 2, (0.5, 1.0): 2, (1.0, 0.9): 2, (1.0, 1.0): 2}
    assert len(list((out / "jobs").iterdir())) == 4
    run_generate(*args)
    assert len(stories_of(out)) == 8


def llamacpp_config(tmp_path, **sampling) -> GenerateConfig:
    return GenerateConfig(backend=LlamaCppBackendConfig(n_ctx=512), sampling=SamplingConfig(**sampling),
                          prompt=PromptConfig(id="paper", messages=[{"role": "user", "content": "Write a story."}],
                                              assistant_prefix="Here it is:\n\n"),
                          out_dir=str(tmp_path), progress=False)


def test_llamacpp_decoding_controls_are_applied(tmp_path):
    grammar = 'root ::= ("yes" | "no") " " [0-9]'
    configs = [
        llamacpp_config(tmp_path, temperature=0.0, n=2, max_tokens=24),
        llamacpp_config(tmp_path, temperature=1.0, grammar=grammar, n=3, max_tokens=8, seed=1),
        llamacpp_config(tmp_path, temperature=1.0, mirostat_mode=2, mirostat_tau=3.0, n=1, max_tokens=12),
        llamacpp_config(tmp_path, temperature=1.0, stop=["."], n=2, max_tokens=64),
        llamacpp_config(tmp_path, temperature=1.0, min_p=0.1, typical_p=0.9, presence_penalty=0.5,
                        frequency_penalty=0.5, repetition_penalty=1.2, repeat_last_n=32, n=1, max_tokens=12),
        llamacpp_config(tmp_path, temperature=0.0, logit_bias={198: 100.0}, n=1, max_tokens=5),
    ]
    run_generation(configs)
    by_setting: dict[str, list[dict]] = {}
    for story in stories_of(tmp_path):
        by_setting.setdefault(json.dumps(story["setting"], sort_keys=True), []).append(story)
    greedy, grammar_stories, mirostat, stopped, penalised, biased = [
        sorted(by_setting[json.dumps(_setting(config), sort_keys=True)], key=lambda s: s["sample_index"])
        for config in configs]
    assert greedy[0]["text"] == greedy[1]["text"]  # temperature 0 is greedy: no randomness
    assert all(story["text"][:-1] in ("yes ", "no ") and story["text"][-1].isdigit() for story in grammar_stories)
    assert mirostat[0]["n_tokens"] >= 1
    assert all("." not in story["text"] and story["finish_reason"] == "stop" for story in stopped)
    assert penalised[0]["n_tokens"] >= 1
    assert biased[0]["text"] == "\n" * 5  # token 198 is "\n" in SmolLM2's vocabulary


def _setting(config: GenerateConfig) -> dict:
    from experiments.identity import setting_of

    return setting_of(config.sampling)
