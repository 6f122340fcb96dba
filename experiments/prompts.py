"""Turn a prompt config into the exact raw string a model is given.

Both in-process backends render the chat template here, from the model file's
own Jinja template, so they feed the model the same text; the rendered string
is stored with every story.
"""

from __future__ import annotations

from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from experiments.config import GenerateConfigError, PromptConfig


class PromptError(GenerateConfigError):
    """A prompt that cannot be rendered (no chat template, or the template refuses the messages)."""


def _raise(message: str) -> None:
    raise PromptError(f"chat template: {message}")


def render_chat(template: str, messages: list[dict[str, str]], special: dict[str, Any]) -> str:
    """Render ``messages`` as transformers' ``apply_chat_template`` does (generation prompt added)."""
    # The same sandboxed Jinja set-up transformers uses, so templates written
    # for it render identically here without importing transformers.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True,
        bos_token=special.get("bos_token", ""), eos_token=special.get("eos_token", ""))


def render_prompt(prompt: PromptConfig, chat_metadata: dict[str, Any] | None) -> str:
    """The raw prompt text: verbatim ``raw``, or the messages in the model's template plus the prefix."""
    if prompt.raw is not None:
        return prompt.raw
    template = (chat_metadata or {}).get("chat_template")
    if not template:
        raise PromptError(
            f"prompt {prompt.id!r} has chat messages but the model has no chat template; "
            "use a raw prompt (prompt.raw) for a base model")
    messages = [dict(message) for message in prompt.messages]
    return render_chat(template, messages, chat_metadata) + prompt.assistant_prefix
