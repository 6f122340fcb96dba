"""The sampler chain of a setting: which samplers run, in what order, with what values.

Both in-process backends build their chain from this module, and the
llama-server profile sends the same order, so one setting means one
distribution everywhere. Names are llama.cpp's (``common/sampling.cpp``);
``DEFAULT_ORDER`` is llama-server's default chain, which is also the order
of the harness before ``sampler_order`` existed, so settings that leave it
unset keep their stories.

Logit bias always runs first and is not part of the order, as in llama.cpp.
Mirostat replaces the whole chain (llama.cpp's Mirostat draws on its own), so
it is refused beside an order or any of the samplers made for creative text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from experiments.config import GenerateConfigError, SamplingConfig

SAMPLER_NAMES = ("penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature")
DEFAULT_ORDER = SAMPLER_NAMES
# llama-server's names in its "samplers" field (common_sampler_type_from_name); only typical is spelled otherwise.
LLAMA_SERVER_NAMES = {name: ("typ_p" if name == "typical_p" else name) for name in SAMPLER_NAMES}

# llama.cpp's defaults (common/common.h), used when a setting turns a sampler on and leaves these unset.
XTC_THRESHOLD = 0.1
DRY_BASE = 1.75
DRY_ALLOWED_LENGTH = 2
DRY_PENALTY_LAST_N = -1  # the whole story so far
DRY_SEQUENCE_BREAKERS = ("\n", ":", "\"", "*")
DRY_MAX_BREAKER_BYTES = 40  # llama_sampler_init_dry cuts a longer breaker to this many bytes
DRY_MAX_TAIL_TOKENS = 20  # ... and the tokens after a breaker's first token to this many
DYNATEMP_EXPONENT = 1.0

# The parameters that turn each sampler on, for the messages.
PARAMETERS = {
    "penalties": ("repetition_penalty", "presence_penalty", "frequency_penalty"),
    "dry": ("dry_multiplier",),
    "top_n_sigma": ("top_n_sigma",),
    "top_k": ("top_k",),
    "typical_p": ("typical_p",),
    "top_p": ("top_p",),
    "min_p": ("min_p",),
    "xtc": ("xtc_probability",),
    "temperature": ("temperature", "dynatemp_range"),
}
CREATIVE_PARAMETERS = ("xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier", "dry_base",
                       "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "dynatemp_range",
                       "dynatemp_exponent")


class SamplerOrderError(GenerateConfigError):
    """A sampler order that names an unknown sampler, repeats one or leaves out one the setting uses."""


@dataclass(frozen=True)
class Xtc:
    probability: float
    threshold: float


@dataclass(frozen=True)
class Dry:
    multiplier: float
    base: float
    allowed_length: int
    penalty_last_n: int  # -1: all generated tokens
    sequence_breakers: tuple[str, ...]


@dataclass(frozen=True)
class Dynatemp:
    range: float
    exponent: float


def in_use(sampling: SamplingConfig) -> set[str]:
    """The samplers this setting turns on (whatever the order)."""
    used = set()
    penalised = (sampling.repetition_penalty not in (None, 1.0) or bool(sampling.presence_penalty)
                 or bool(sampling.frequency_penalty))
    if penalised and sampling.repeat_last_n != 0:
        used.add("penalties")
    if sampling.dry_multiplier and sampling.dry_penalty_last_n != 0:
        used.add("dry")
    if sampling.top_n_sigma is not None:
        used.add("top_n_sigma")
    if sampling.top_k > 0:
        used.add("top_k")
    if sampling.typical_p is not None and sampling.typical_p < 1:
        used.add("typical_p")
    if sampling.top_p < 1:
        used.add("top_p")
    if sampling.min_p:
        used.add("min_p")
    if sampling.xtc_probability:
        used.add("xtc")
    if sampling.temperature != 1 or sampling.dynatemp_range:
        used.add("temperature")
    return used


def order(sampling: SamplingConfig) -> tuple[str, ...]:
    """The whole order of the chain: ``sampling.sampler_order``, or the default."""
    return tuple(sampling.sampler_order) if sampling.sampler_order is not None else DEFAULT_ORDER


def chain(sampling: SamplingConfig) -> tuple[str, ...]:
    """The samplers that run, in order: those in use, where the order puts them."""
    used = in_use(sampling)
    return tuple(name for name in order(sampling) if name in used)


def check_order(sampling: SamplingConfig) -> None:
    """Refuse an order that cannot be honoured exactly, naming the field and what is allowed."""
    creative = [name for name in CREATIVE_PARAMETERS if getattr(sampling, name) is not None]
    if sampling.mirostat_mode and (creative or sampling.sampler_order is not None):
        named = creative + (["sampler_order"] if sampling.sampler_order is not None else [])
        raise SamplerOrderError(
            f"sampling.mirostat_mode={sampling.mirostat_mode} replaces the whole sampler chain, so "
            + ", ".join(f"sampling.{name}" for name in named) + " would not run; unset them or mirostat_mode")
    if sampling.dynatemp_range and sampling.temperature == 0:
        raise SamplerOrderError(f"sampling.dynatemp_range={sampling.dynatemp_range} with sampling.temperature=0: "
                                "temperature 0 is greedy decoding, which has no temperature to vary; set a "
                                "temperature > 0 or unset dynatemp_range")
    if sampling.sampler_order is None:
        return
    given = list(sampling.sampler_order)
    unknown = [name for name in given if name not in SAMPLER_NAMES]
    if unknown:
        raise SamplerOrderError(f"sampling.sampler_order={given!r}: unknown sampler(s) {unknown}; allowed: "
                                + ", ".join(SAMPLER_NAMES) + " (or null for that order)")
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise SamplerOrderError(f"sampling.sampler_order={given!r} names {repeated} more than once; "
                                "each sampler runs at most once")
    missing = sorted(in_use(sampling) - set(given), key=SAMPLER_NAMES.index)
    if missing:
        raise SamplerOrderError(
            f"sampling.sampler_order={given!r} leaves out " + ", ".join(missing) + ", which this setting uses ("
            + ", ".join(f"{p}={getattr(sampling, p)!r}" for name in missing for p in PARAMETERS[name]
                        if getattr(sampling, p) is not None)
            + "); add them to the order, or unset them")


def xtc(sampling: SamplingConfig) -> Optional[Xtc]:
    if not sampling.xtc_probability:
        return None
    threshold = sampling.xtc_threshold if sampling.xtc_threshold is not None else XTC_THRESHOLD
    return Xtc(sampling.xtc_probability, threshold)


def dry(sampling: SamplingConfig) -> Optional[Dry]:
    if "dry" not in in_use(sampling):
        return None
    return Dry(
        multiplier=sampling.dry_multiplier,
        base=sampling.dry_base if sampling.dry_base is not None else DRY_BASE,
        allowed_length=sampling.dry_allowed_length if sampling.dry_allowed_length is not None else DRY_ALLOWED_LENGTH,
        penalty_last_n=sampling.dry_penalty_last_n if sampling.dry_penalty_last_n is not None else DRY_PENALTY_LAST_N,
        sequence_breakers=tuple(sampling.dry_sequence_breakers if sampling.dry_sequence_breakers is not None
                                else DRY_SEQUENCE_BREAKERS))


def dynatemp(sampling: SamplingConfig) -> Optional[Dynatemp]:
    if not sampling.dynatemp_range:
        return None
    exponent = sampling.dynatemp_exponent if sampling.dynatemp_exponent is not None else DYNATEMP_EXPONENT
    return Dynatemp(sampling.dynatemp_range, exponent)
