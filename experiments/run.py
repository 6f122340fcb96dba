"""The generate stage's core: plan the stories of each setting, generate the
missing ones, and append each to the store as soon as it is finished.

``run_generation`` takes typed configs, checks them all first, and never touches
Hydra, so tests and other tools call it directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from experiments.backends import Backend, FailedStory, StoryRequest, backend_class
from experiments.config import ConfigError, GenerateConfig
from experiments.files import utc_now, write_atomic
from experiments.identity import canonical_json, setting_id, setting_of, story_id, story_seed
from experiments.manifest import harness_version, package_versions
from experiments.store import StoryStore

log = logging.getLogger(__name__)

# Backends stay loaded for the life of the process, keyed by their config, so a
# sweep whose jobs run in one process (a single run over a grid, or Hydra's
# basic launcher) loads each model once.
_BACKENDS: dict[str, Backend] = {}


def get_backend(config: GenerateConfig) -> Backend:
    key = canonical_json(dataclasses.asdict(config.backend))
    if key not in _BACKENDS:
        _BACKENDS[key] = backend_class(config.backend.name)(config.backend)
    return _BACKENDS[key]


def release_backends() -> None:
    for backend in _BACKENDS.values():
        backend.close()
    _BACKENDS.clear()


@dataclass
class SettingPlan:
    config: GenerateConfig
    backend: Backend
    setting: dict[str, Any]
    setting_id: str
    requests: list[StoryRequest]
    missing: list[StoryRequest] = field(default_factory=list)
    resolved_config: Optional[str] = None  # YAML of the job's resolved config


@dataclass
class RunSummary:
    out_dirs: list[str]
    settings: int
    requested: int
    already_present: int
    generated: int
    tokens: int
    seconds: float
    failed: list[FailedStory] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan


def validate(config: GenerateConfig) -> None:
    """Checks that need the backend class but no model: does it honour every parameter and the prompt?"""
    backend = backend_class(config.backend.name)
    backend.check_supported(config.sampling, config.backend)
    backend.check_prompt(config.prompt, config.backend)
    if config.sampler_diagnostics and not backend.records_diagnostics:
        raise ConfigError(f"sampler_diagnostics=true: backend {backend.name!r} cannot record what its sampler did "
                          "(the in-process backends hf and llamacpp can); set sampler_diagnostics=false")


def plan_setting(config: GenerateConfig, resolved_config: Optional[str] = None) -> SettingPlan:
    backend = get_backend(config)
    prompt_text = backend.prompt_text(config.prompt)
    setting = setting_of(config.sampling)
    identity = backend.identity()
    sid = setting_id(setting, config.prompt.id, prompt_text, backend.name + backend.variant(), identity["sha256"])
    requests = [
        StoryRequest(story_id=story_id(sid, index), sample_index=index,
                     seed=story_seed(setting, prompt_text, index), prompt=prompt_text)
        for index in range(config.sampling.n)
    ]
    return SettingPlan(config, backend, setting, sid, requests, resolved_config=resolved_config)


def run_generation(configs: list[GenerateConfig], resolved_configs: Optional[list[str]] = None,
                   progress: Optional[bool] = None) -> RunSummary:
    """Generate every missing story of every setting in ``configs``.

    All validation, prompt rendering and resume bookkeeping happen before the
    first model loads.
    """
    from tqdm import tqdm

    for config in configs:
        validate(config)
    resolved_configs = resolved_configs or [None] * len(configs)
    plans = [plan_setting(config, resolved) for config, resolved in zip(configs, resolved_configs)]
    stores: dict[str, StoryStore] = {}
    for plan in plans:
        store = stores.setdefault(plan.config.out_dir, StoryStore(plan.config.out_dir))
        present = store.existing_ids()
        plan.missing = [request for request in plan.requests if request.story_id not in present]

    requested = sum(len(plan.requests) for plan in plans)
    missing = sum(len(plan.missing) for plan in plans)
    log.info("%d setting(s), %d stories: %d already in the store, %d to generate",
             len(plans), requested, requested - missing, missing)
    show = configs[0].progress if progress is None and configs else bool(progress)
    bar = tqdm(total=missing, unit="story", desc="generate", disable=not show, dynamic_ncols=True)
    started, generated, tokens = time.perf_counter(), 0, 0
    rate = _TokenRate(bar, started)
    failed: list[FailedStory] = []
    try:
        for plan in plans:
            store = stores[plan.config.out_dir]
            job_dir = Path(plan.config.out_dir) / "jobs" / plan.setting_id
            if plan.missing:
                # Before the manifest is written, so it records what a server reports about its model.
                plan.backend.load()
            run_record = _start_job(job_dir, plan)
            written = 0
            # A backend that reports each step's tokens drives the rate; for the others, finished stories do.
            streams_tokens = plan.backend.reports_tokens
            plan.backend.on_tokens = rate.add if streams_tokens else None
            plan.backend.record_diagnostics = plan.config.sampler_diagnostics
            for story in plan.backend.generate(plan.missing, plan.config.sampling) if plan.missing else ():
                bar.update(1)
                if isinstance(story, FailedStory):
                    failed.append(story)
                    log.warning("story %s (sample %d of setting %s) failed: %s", story.request.story_id,
                                story.request.sample_index, plan.setting_id, story.error)
                    continue
                if store.append(_story_record(plan, story)):
                    written += 1
                    generated += 1
                    tokens += story.n_tokens
                    if not streams_tokens:
                        rate.add(story.n_tokens)
            _finish_job(job_dir, run_record, written)
    finally:
        for plan in plans:  # backends outlive the run (they are cached); the bar does not
            plan.backend.on_tokens = None
        bar.close()
    return RunSummary(out_dirs=sorted(stores), settings=len(plans), requested=requested,
                      already_present=requested - missing, generated=generated, tokens=tokens,
                      seconds=time.perf_counter() - started, failed=failed)


class _TokenRate:
    """The progress bar's tokens/s: of every token made, as the backend makes them.

    A backend that decodes many stories at once reports each step's tokens
    (``on_tokens``), so the rate is the whole batch's, not only of the
    stories finished so far; others count a story's tokens when it is done.
    """

    def __init__(self, bar, started: float):
        self.bar, self.started, self.tokens, self.shown = bar, started, 0, 0.0

    def add(self, count: int) -> None:
        self.tokens += count
        now = time.perf_counter()
        if now - self.shown >= 0.5:  # a postfix per decoding step would cost more than the step
            self.shown = now
            self.bar.set_postfix(tok_s=f"{self.tokens / max(now - self.started, 1e-9):.1f}")


def _story_record(plan: SettingPlan, story) -> dict[str, Any]:
    identity = plan.backend.identity()
    prompt = plan.config.prompt
    logprobs = story.token_logprobs
    if logprobs is not None:
        logprobs = [value if math.isfinite(value) else None for value in logprobs]
    record = {
        "story_id": story.request.story_id,
        "setting_id": plan.setting_id,
        "setting": plan.setting,
        # Server backends only (else null): the request body's parameters under the
        # server's own names, and what the server reported running.
        "sent_parameters": story.sent_parameters,
        "server_response": story.server_response,
        "seed": story.request.seed,
        "sample_index": story.request.sample_index,
        "backend": plan.backend.name,
        "model": identity["model"],
        "model_sha256": identity["sha256"],
        "prompt_id": prompt.id,
        "prompt": story.request.prompt,
        "messages": [dict(message) for message in prompt.messages] or None,
        "text": story.text,
        "n_tokens": story.n_tokens,
        "finish_reason": story.finish_reason,
        "token_logprobs": logprobs,
        # Only when sampler_diagnostics is on (else null): per token, entropy before and after the chain
        # and the candidates it kept.
        "sampler_diagnostics": story.sampler_diagnostics,
        "latency_s": round(story.latency_s, 4),
        "created_at": utc_now(),
        "harness_version": harness_version(),
    }
    if story.token_alternatives is not None:  # only a setting with top_logprobs asks for them
        record["token_alternatives"] = story.token_alternatives
    return record


def _start_job(job_dir: Path, plan: SettingPlan) -> dict[str, Any]:
    """Write the setting's resolved config and open a run record in its manifest."""
    job_dir.mkdir(parents=True, exist_ok=True)
    if plan.resolved_config is not None:
        write_atomic(job_dir / "config.yaml", plan.resolved_config)
    else:
        write_atomic(job_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(plan.config)))
    manifest_path = job_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "setting_id": plan.setting_id,
        "setting": plan.setting,
        "prompt_id": plan.config.prompt.id,
        "prompt": plan.requests[0].prompt if plan.requests else None,
        "n": plan.config.sampling.n,
        "runs": [],
    }
    manifest["backend"] = plan.backend.name
    manifest["model"] = plan.backend.identity()
    record = {
        "started_at": utc_now(),
        "finished_at": None,
        "to_generate": len(plan.missing),
        "generated": 0,
        "harness_version": harness_version(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    manifest["runs"].append(record)
    write_atomic(manifest_path, json.dumps(manifest, indent=2))
    return record


def _finish_job(job_dir: Path, record: dict[str, Any], written: int) -> None:
    manifest_path = job_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for run in manifest["runs"]:
        if run["started_at"] == record["started_at"] and run["pid"] == record["pid"]:
            run["finished_at"] = utc_now()
            run["generated"] = written
    write_atomic(manifest_path, json.dumps(manifest, indent=2))

