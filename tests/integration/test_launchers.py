"""Hydra launchers running the generate stage for real, and the SLURM launcher's config.

The -m sweeps run ``python -m experiments.generate`` as a researcher would, with
the harness's launcher presets (conf/hydra/launcher/): ``local``
(submitit_local, every job in its own subprocess) and ``parallel`` (joblib, a
pool of worker processes). Every job appends to the sweep's one story store at
the same time as the others; the checks are exact counts, no duplicate, no
torn line, and a second identical command that adds nothing. Settings are tiny
(llama.cpp, 6 tokens, one thread per job on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import experiments.backends.hf
import experiments.generate  # noqa: F401  (registers the config schemas)
import experiments.run
from experiments.config import (GenerateConfig, HFBackendConfig, LlamaCppBackendConfig, PromptConfig,
                                SamplingConfig)
from experiments.run import release_backends, run_generation
from experiments.store import read_stories

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TINY = ["backend=llamacpp", "backend.threads=1", "backend.n_ctx=512", "sampling.n=3", "sampling.max_tokens=6"]


def run_sweep(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m experiments.generate -m ARGS`` in a real subprocess; the result carries its pid."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "experiments.generate", "-m", *args, "progress=false"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-4000:]}"
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    result.pid = process.pid
    return result


def check_store(out: Path, temperatures: list[float], n: int) -> list[dict]:
    """Every line whole, every story once, exactly n per setting."""
    lines = (out / "stories.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "the store must end with a complete line"
    stories = [json.loads(line) for line in lines[:-1]]  # raises on a torn or interleaved line
    assert len(stories) == n * len(temperatures)
    assert len({story["story_id"] for story in stories}) == len(stories), "duplicate story_id"
    assert Counter(story["setting"]["temperature"] for story in stories) == {t: n for t in temperatures}
    for temperature in temperatures:
        indices = sorted(s["sample_index"] for s in stories if s["setting"]["temperature"] == temperature)
        assert indices == list(range(n))
    assert not (out / "stories.jsonl.torn").exists()
    assert read_stories(out / "stories.jsonl") == stories
    return stories


def job_runs(out: Path) -> dict[str, list[dict]]:
    """The run records of each setting's manifest, by setting_id."""
    return {job.name: json.loads((job / "manifest.json").read_text())["runs"] for job in (out / "jobs").iterdir()}


def test_submitit_local_sweep_writes_one_store_and_a_rerun_adds_nothing(tmp_path):
    out = tmp_path / "sweep"
    args = ["hydra/launcher=local", *TINY, "sampling.temperature=0.5,1.0", f"out_dir={out}"]
    first = run_sweep(*args)
    check_store(out, [0.5, 1.0], n=3)
    runs = job_runs(out)
    assert len(runs) == 2
    job_pids = {records[0]["pid"] for records in runs.values()}
    assert len(job_pids) == 2 and first.pid not in job_pids, "each job must run in its own subprocess"
    # submitit's files (pickled job, stdout/stderr) stay under the sweep's out_dir.
    logs = sorted((out / "hydra" / ".submitit").glob("*/*_log.err"))
    assert len(logs) == 2 and all("3 generated" in log.read_text() for log in logs)
    assert sorted(path.name for path in (out / "hydra").glob("job-*")) == ["job-0", "job-1"]

    before = (out / "stories.jsonl").read_bytes()
    run_sweep(*args)
    assert (out / "stories.jsonl").read_bytes() == before
    for records in job_runs(out).values():
        assert [(r["to_generate"], r["generated"]) for r in records] == [(3, 3), (0, 0)]


def test_joblib_sweep_writes_one_store_and_any_launcher_resumes_it(tmp_path):
    out = tmp_path / "sweep"
    sweep = [*TINY, "sampling.temperature=0.5,1.0,1.5", f"out_dir={out}"]
    first = run_sweep("hydra/launcher=parallel", *sweep)
    check_store(out, [0.5, 1.0, 1.5], n=3)
    runs = job_runs(out)
    assert len(runs) == 3
    job_pids = {records[0]["pid"] for records in runs.values()}
    # n_jobs=2: three jobs on at most two worker processes, none of them the launcher's.
    assert 1 <= len(job_pids) <= 2 and first.pid not in job_pids
    assert "is launching 3 jobs" in first.stdout + first.stderr

    before = (out / "stories.jsonl").read_bytes()
    run_sweep("hydra/launcher=parallel", *sweep)
    assert (out / "stories.jsonl").read_bytes() == before
    # The store is the sweep's state, whatever ran it: another launcher adds nothing either.
    run_sweep("hydra/launcher=local", *sweep)
    assert (out / "stories.jsonl").read_bytes() == before
    for records in job_runs(out).values():
        assert [(r["to_generate"], r["generated"]) for r in records] == [(3, 3), (0, 0), (0, 0)]


SLURM_OVERRIDES = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                   "hydra.launcher.timeout_min=120", "hydra.launcher.mem_gb=32"]


def compose_slurm(out_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="generate"):
        return compose(config_name="config", overrides=[*SLURM_OVERRIDES, f"out_dir={out_dir}", *overrides],
                       return_hydra_config=True)


def test_slurm_launcher_config_composes_with_its_fields(tmp_path):
    cfg = compose_slurm(tmp_path / "study")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == ("gpu", 1, 120, 32)
    assert launcher.max_num_timeout == 3  # requeue on timeout: safe, jobs resume from the store
    assert OmegaConf.select(cfg, "hydra.launcher.submitit_folder") == f"{tmp_path / 'study'}/hydra/.submitit/%j"
    # Typed by the plugin's schema: a typo or a wrong type fails at composition.
    with pytest.raises(Exception, match="partiton"):
        compose_slurm(tmp_path, "hydra.launcher.partiton=gpu")
    with pytest.raises(Exception, match="timeout_min"):
        compose_slurm(tmp_path, "hydra.launcher.timeout_min=two_hours")


def test_slurm_launcher_writes_the_sbatch_script_the_fields_say(tmp_path, monkeypatch):
    """The plugin and submitit build the real sbatch script; only the sbatch call is stopped."""
    from submitit.slurm.slurm import SlurmExecutor

    class Submitted(Exception):
        pass

    scripts = []

    def capture(executor, command):
        scripts.append(executor._make_submission_file_text(command, "test"))
        raise Submitted

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit refuses to build without srun on PATH
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(SlurmExecutor, "_submit_command", capture)

    out = tmp_path / "study"
    cfg = compose_slurm(out, "hydra.launcher.account=lab", "+hydra.launcher.additional_parameters.mail-type=END")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda _: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["sampling.temperature=0.5"], ["sampling.temperature=1.0"]], initial_job_idx=0)

    lines = set(scripts[0].splitlines())
    assert {"#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=120", "#SBATCH --mem=32GB",
            "#SBATCH --cpus-per-task=4", "#SBATCH --account=lab", "#SBATCH --mail-type=END",
            "#SBATCH --array=0-1%2", "#SBATCH --job-name=generate", "#SBATCH --signal=USR2@120"} <= lines
    logs = out / "hydra" / ".submitit" / "%A_%a"
    assert f"#SBATCH --output={logs}/%A_%a_0_log.out" in lines
    assert f"#SBATCH --error={logs}/%A_%a_0_log.err" in lines


def grid_configs(backend, out_dir: Path) -> list[GenerateConfig]:
    """A three-setting grid, as experiment=demo's temperatures, at toy size."""
    prompt = PromptConfig(id="paper", messages=[{"role": "user", "content": "Write a story."}],
                          assistant_prefix="Here it is:\n\n")
    return [GenerateConfig(backend=backend, prompt=prompt, out_dir=str(out_dir), progress=False,
                           sampling=SamplingConfig(temperature=temperature, top_k=50, n=2, max_tokens=6))
            for temperature in (0.5, 1.0, 1.5)]


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` so every call is recorded and then really made."""
    real = getattr(owner, name)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_a_grid_in_one_process_loads_the_model_once(tmp_path, monkeypatch, backend):
    release_backends()  # a cold cache: no model left over from another test
    backends_used = []
    real_get_backend = experiments.run.get_backend
    monkeypatch.setattr(experiments.run, "get_backend",
                        lambda config: backends_used.append(real_get_backend(config)) or backends_used[-1])
    if backend == "llamacpp":
        import llama_cpp

        model_loads = count_calls(monkeypatch, llama_cpp, "Llama")  # the backend imports it when it loads
        config = LlamaCppBackendConfig(n_ctx=512)
    else:
        model_loads = count_calls(monkeypatch, experiments.backends.hf, "load_transformers_causal_lm")
        config = HFBackendConfig(batch_size=2)
    try:
        summary = run_generation(grid_configs(config, tmp_path))
        assert summary.settings == 3 and summary.generated == 6
        assert len(backends_used) == 3 and len({id(b) for b in backends_used}) == 1
        assert len(model_loads) == 1

        # The next grid in this process, with the same backend config, reuses the loaded model.
        another = grid_configs(config, tmp_path)[0]
        another.sampling = SamplingConfig(temperature=2.0, n=1, max_tokens=4)
        more = run_generation([another])
        assert more.generated == 1 and len(model_loads) == 1
    finally:
        release_backends()
    assert len(read_stories(tmp_path / "stories.jsonl")) == 7
