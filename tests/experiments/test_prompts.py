"""Prompts render to the exact raw text the model is given."""

import pytest

from experiments.config import PromptConfig
from experiments.prompts import PromptError, render_prompt

LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST]' + message['content'] + '[/INST]' }}"
    "{% endif %}{% endfor %}")


def paper_prompt() -> PromptConfig:
    return PromptConfig(id="paper", messages=[{"role": "user", "content": "Write a story."}],
                        assistant_prefix="Here it is:\n\n")


def test_a_llama2_template_gives_the_papers_raw_prompt():
    text = render_prompt(paper_prompt(), {"chat_template": LLAMA2_TEMPLATE})
    assert text == "[INST]Write a story.[/INST]Here it is:\n\n"


def test_the_embedded_models_template_is_used():
    from experiments.models import embedded_gguf_path, gguf_chat_metadata

    text = render_prompt(paper_prompt(), gguf_chat_metadata(embedded_gguf_path()))
    # SmolLM2's template inserts its default system prompt when none is given.
    assert text.endswith("<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\nHere it is:\n\n")
    assert text.startswith("<|im_start|>system\n")


def test_a_raw_prompt_is_sent_verbatim():
    raw = PromptConfig(id="raw", raw="[INST]Write a story.[/INST]Here it is:\n\n")
    assert render_prompt(raw, None) == raw.raw


def test_chat_messages_need_a_template():
    with pytest.raises(PromptError, match="no chat template"):
        render_prompt(paper_prompt(), {"chat_template": None})
