"""What one story's request to an OpenAI-compatible server carries, and what its response becomes.

The body is the model name, the prompt (chat messages, or one raw string for
the completions endpoint) and the setting's parameters as the profile names
them (``openai_profiles.request_parameters``, plus the story's seed). The
prompt stored with a story is exactly the prompt sent: a raw prompt
verbatim, or the chat messages as canonical JSON.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Optional

from experiments.backends.base import GeneratedStory, StoryRequest
from experiments.backends.openai_profiles import Profile, RequestParameters
from experiments.config import BackendConfig, ConfigError, Endpoint, PromptConfig
from experiments.identity import canonical_json

log = logging.getLogger("experiments.backends.openai_backend")


def endpoint_for(prompt: PromptConfig, backend: BackendConfig) -> Endpoint:
    """The endpoint a prompt goes to: backend.endpoint, or with ``auto`` the one its form needs."""
    endpoint = Endpoint(backend.endpoint)
    if endpoint == Endpoint.auto:
        return Endpoint.completions if prompt.raw is not None else Endpoint.chat
    return endpoint


def check_prompt(prompt: PromptConfig, endpoint: Endpoint, profile: Profile) -> None:
    """Refuse a prompt this endpoint of this server cannot be sent as configured."""
    if prompt.raw is not None and endpoint == Endpoint.chat:
        raise ConfigError(f"prompt {prompt.id!r} is a raw string, which only the completions endpoint sends; "
                          "set backend.endpoint=completions (or auto)")
    if prompt.raw is None and endpoint == Endpoint.completions:
        raise ConfigError(
            f"prompt {prompt.id!r} has chat messages, but backend.endpoint=completions sends one raw string and "
            "the server's chat template is not known here; use backend.endpoint=chat (or auto), or a raw "
            "prompt (prompt.raw)")
    if endpoint == Endpoint.chat and prompt.assistant_prefix and profile.prefill is None:
        raise ConfigError(
            f"prompt {prompt.id!r} starts the assistant's turn with {prompt.assistant_prefix!r} "
            f"(prompt.assistant_prefix), which the chat endpoint of profile {profile.name!r} cannot continue; "
            "set prompt.assistant_prefix='' or send a raw prompt through the completions endpoint "
            "(e.g. prompt=paper_llama2_raw)")


def prompt_text(prompt: PromptConfig, endpoint: Endpoint) -> str:
    """A raw prompt verbatim, or the chat messages sent, as JSON (with the assistant prefix, if any)."""
    if endpoint == Endpoint.completions:
        return prompt.raw
    messages = [dict(message) for message in prompt.messages]
    if prompt.assistant_prefix:
        messages.append({"role": "assistant", "content": prompt.assistant_prefix})
    return canonical_json(messages)


def continues_assistant(text: str, endpoint: Endpoint) -> bool:
    """Whether a prompt made by ``prompt_text`` asks the server to continue a final assistant message."""
    return endpoint == Endpoint.chat and json.loads(text)[-1]["role"] == "assistant"


def send(client: Any, model: str, endpoint: Endpoint, text: str, parameters: RequestParameters) -> Any:
    """One request through the openai client; its body is ``{model, messages|prompt, **parameters.sent()}``."""
    extra_body = parameters.extra_body or None
    if endpoint == Endpoint.chat:
        return client.chat.completions.create(model=model, messages=json.loads(text), extra_body=extra_body,
                                              **parameters.standard)
    return client.completions.create(model=model, prompt=text, extra_body=extra_body, **parameters.standard)


def story_from_response(request: StoryRequest, endpoint: Endpoint, response: Any, latency: float,
                        parameters: RequestParameters, attempts: int,
                        profile: Optional[Profile] = None) -> GeneratedStory:
    """The story in a chat or completions response, with what was sent and what the server said it ran."""
    choice = response.choices[0]
    logprobs = None
    alternatives = token_alternatives(choice, endpoint) if parameters.alternatives else None
    if endpoint == Endpoint.chat:
        text = choice.message.content or ""
        if profile is not None and profile.prefill_echoes_prefix and continues_assistant(request.prompt, endpoint):
            # The story is what the model wrote after the prefix, as on every other backend.
            prefix = json.loads(request.prompt)[-1]["content"]
            text = text[len(prefix):] if text.startswith(prefix) else text
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [token.logprob for token in choice.logprobs.content]
    else:
        text = choice.text
        if choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
            logprobs = list(choice.logprobs.token_logprobs)
    if logprobs is not None:
        logprobs = [float("nan") if value is None else float(value) for value in logprobs]  # stored as null
    usage = response.usage
    n_tokens = usage.completion_tokens if usage is not None else (len(logprobs) if logprobs is not None else 0)
    server_response = {"model": response.model, "system_fingerprint": getattr(response, "system_fingerprint", None),
                       "attempts": attempts}
    applied = applied_settings(response, profile) if profile is not None else None
    if applied is not None:
        server_response["applied"] = applied
        server_response["applied_differs"] = differing = settings_differing(parameters.sent(), applied)
        for name, values in differing.items():
            key = (name, repr(values))
            if key not in _WARNED:  # once per field and value, not once per story
                _WARNED.add(key)
                log.warning("the server applied %s = %r where %r was sent (recorded with each story as "
                            "server_response.applied_differs)", name, values["applied"], values["sent"])
    return GeneratedStory(
        request=request, text=text, n_tokens=n_tokens, finish_reason=choice.finish_reason or "unknown",
        token_logprobs=logprobs, latency_s=latency, sent_parameters=parameters.sent(),
        server_response=server_response, token_alternatives=alternatives)


def _number(value: Any) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def token_alternatives(choice: Any, endpoint: Endpoint) -> Optional[list[dict[str, Any]]]:
    """Per generated token {"token", "logprob", "top": [[text, logprob], ...]}, as the server listed them.

    Chat responses carry them in ``logprobs.content[i].top_logprobs``; completions in
    ``logprobs.tokens`` and ``logprobs.top_logprobs`` (one {text: logprob} mapping per token).
    None when the server sent none (it may ignore the request).
    """
    logprobs = choice.logprobs
    if logprobs is None:
        return None
    if endpoint == Endpoint.chat:
        if not logprobs.content:
            return None
        return [{"token": item.token, "logprob": _number(item.logprob),
                 "top": [[top.token, _number(top.logprob)] for top in (item.top_logprobs or [])]}
                for item in logprobs.content]
    if not logprobs.tokens:
        return None
    tops = logprobs.top_logprobs or [None] * len(logprobs.tokens)
    values = logprobs.token_logprobs or [None] * len(logprobs.tokens)
    return [{"token": token, "logprob": _number(value),
             "top": [[text, _number(logprob)] for text, logprob in (top or {}).items()]}
            for token, value, top in zip(logprobs.tokens, values, tops)]


def applied_settings(response: Any, profile: Profile) -> Optional[dict[str, Any]]:
    """The sampler settings the server says it ran (``profile.echo_path`` in the response), or None."""
    if not profile.echo_path:
        return None
    found: Any = response.model_extra or {}  # the openai client keeps fields it does not know here
    for key in profile.echo_path:
        found = found.get(key) if isinstance(found, dict) else None
    return dict(found) if isinstance(found, dict) else None


_WARNED: set[tuple[str, str]] = set()

# Names under which an echo reports a sent field (llama-server: n_predict for max_tokens).
_ECHO_ALIASES = {"max_tokens": "n_predict", "max_completion_tokens": "n_predict"}
# Fields that are not sampler settings, or that a server rewrites on purpose (logprobs -> n_probs).
_NOT_ECHOED = frozenset({"logprobs", "top_logprobs", "stop", "logit_bias", "grammar", "json_schema",
                         "response_format", "verbose",
                         "continue_final_message", "add_generation_prompt"})


def settings_differing(sent: dict[str, Any], applied: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Sent sampler fields the server applied with another value: {field: {"sent": .., "applied": ..}}.

    Servers keep floats in single precision (0.95 comes back as 0.949999988), so
    numbers are compared to a relative 1e-6; a server that clamps a value
    into its range shows up here.
    """
    differing = {}
    for name, value in sent.items():
        echoed = _ECHO_ALIASES.get(name, name)
        if name in _NOT_ECHOED or echoed not in applied:
            continue
        got = applied[echoed]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(got, (int, float)):
            same = value == got
        else:
            same = math.isclose(float(value), float(got), rel_tol=1e-6, abs_tol=1e-9)
        if not same:
            differing[name] = {"sent": value, "applied": got}
    return differing
