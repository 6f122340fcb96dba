"""The one small interface every backend implements.

A backend turns a batch of story requests (one setting, one prompt) into
generated stories with the log-probability of each generated token under the
untempered model. Heavy imports (torch, llama_cpp, openai) stay inside the
backend module that needs them, and happen only when a backend is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional

from experiments.config import BackendConfig, ConfigError, PromptConfig, SamplingConfig
from experiments.prompts import render_prompt

# A parameter counts as used when it differs from the value that leaves
# decoding untouched; a backend must then honour it or refuse the setting.
NEUTRAL_VALUES: dict[str, Any] = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat_mode": 0,
    "stop": [],
    "logit_bias": {},
    "xtc_probability": 0.0,
    "dry_multiplier": 0.0,
    "dynatemp_range": 0.0,
}
ALWAYS_HONOURED = {"temperature", "max_tokens", "n", "seed"}


def used_parameters(sampling: SamplingConfig) -> list[str]:
    """Names of the sampling parameters this setting actually uses."""
    used = []
    for name, value in vars(sampling).items():
        if name in ALWAYS_HONOURED or value is None:
            continue
        if name in NEUTRAL_VALUES and value == NEUTRAL_VALUES[name]:
            continue
        used.append(name)
    return used


@dataclass(frozen=True)
class StoryRequest:
    story_id: str
    sample_index: int
    seed: int
    prompt: str  # the exact raw prompt text


@dataclass
class GeneratedStory:
    request: StoryRequest
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length"
    token_logprobs: Optional[list[float]]  # None when the backend cannot report them
    latency_s: float
    # A server backend: the exact parameters of the request body (its names, extra_body
    # included), and what the server said it ran (model snapshot, fingerprint, attempts).
    sent_parameters: Optional[dict[str, Any]] = None
    server_response: Optional[dict[str, Any]] = None
    # Per token, what the sampler chain did (``SamplerDiagnostics.as_record``); None unless asked for.
    sampler_diagnostics: Optional[dict[str, list]] = None
    # With sampling.top_logprobs: per generated token {"token": text, "logprob": float, "top": [[text,
    # logprob], ...]} (the most likely alternatives under the untempered model); None otherwise.
    token_alternatives: Optional[list[dict[str, Any]]] = None


@dataclass
class SamplerDiagnostics:
    """Per generated token: the entropy (nats) of the model's untempered distribution, the entropy
    of the distribution the token was drawn from (after the whole chain), and how many candidates
    the chain kept (probability > 0)."""

    entropy_before: list[float]
    entropy_after: list[float]
    candidates_kept: list[int]

    def as_record(self, n_tokens: int) -> dict[str, list]:
        """The first ``n_tokens`` of each (the tokens stored; an end-of-turn token is not)."""
        return {"entropy_before": self.entropy_before[:n_tokens], "entropy_after": self.entropy_after[:n_tokens],
                "candidates_kept": self.candidates_kept[:n_tokens]}


@dataclass
class FailedStory:
    """A story that could not be generated (after a backend's own retries); retried on resume."""

    request: StoryRequest
    error: str


class Backend(ABC):
    """Build with a backend config (cheap: no model is loaded); call ``generate`` once per setting."""

    name: ClassVar[str]
    # Parameters beyond ALWAYS_HONOURED that this backend applies.
    supported_parameters: ClassVar[frozenset[str]]
    # True for a backend that calls ``on_tokens(count)`` after each decoding step
    # with the tokens that step made (so progress counts stories still running).
    reports_tokens: ClassVar[bool] = False
    on_tokens: Optional[Callable[[int], None]] = None
    # True for a backend that can record per-token sampler diagnostics; ``record_diagnostics``
    # (set by the run from the config's ``sampler_diagnostics``) asks it to.
    records_diagnostics: ClassVar[bool] = False
    record_diagnostics: bool = False

    @classmethod
    def check_supported(cls, sampling: SamplingConfig, backend: BackendConfig) -> None:
        """Refuse, before any model loads, a setting this backend would not honour.

        ``backend`` is the backend's config: what a server backend can send depends on it.
        """
        unsupported = [name for name in used_parameters(sampling) if name not in cls.supported_parameters]
        if unsupported:
            raise ConfigError(
                f"backend {cls.name!r} cannot honour sampling parameter(s) "
                + ", ".join(f"{name}={getattr(sampling, name)!r}" for name in unsupported)
                + f"; it supports: {', '.join(sorted(cls.supported_parameters | ALWAYS_HONOURED))}")

    @classmethod
    def check_prompt(cls, prompt: PromptConfig, backend: BackendConfig) -> None:
        """Refuse, before any model loads, a prompt this backend cannot send as configured."""

    def __init__(self, config: BackendConfig):
        self.config = config

    @abstractmethod
    def load(self) -> None:
        """Load the model (once); the constructor stays cheap so a finished sweep never loads it."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Model identity for stories and the manifest: at least ``model`` and ``sha256``."""

    def variant(self) -> str:
        """What, besides backend and model file, changes the numbers (e.g. precision); part of setting ids."""
        return ""

    @abstractmethod
    def chat_metadata(self) -> Optional[dict[str, Any]]:
        """The model's chat template and special tokens (None if it has none)."""

    def prompt_text(self, prompt: PromptConfig) -> str:
        """The exact prompt this backend sends, as stored with each story.

        In process: the raw text, with chat messages rendered in the model's own
        template. A server backend overrides this (it sends the messages).
        """
        return render_prompt(prompt, self.chat_metadata())

    @abstractmethod
    def generate(self, requests: list[StoryRequest],
                 sampling: SamplingConfig) -> Iterator[GeneratedStory | FailedStory]:
        """Yield each story as soon as it is finished (in any order).

        A transient failure that outlasted the backend's retries is yielded as
        a ``FailedStory``; a permanent one (bad parameter, unknown model) raises.
        """

    def close(self) -> None:
        """Free the model."""
