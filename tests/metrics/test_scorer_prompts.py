"""Stories from a chat server store their prompt as the JSON messages sent."""

from metrics.scorer import chat_messages


def test_chat_json_is_recognised():
    messages = chat_messages('[{"content":"Write a story.","role":"user"},{"content":"Here it is:\\n\\n","role":"assistant"}]')
    assert messages == [{"content": "Write a story.", "role": "user"},
                        {"content": "Here it is:\n\n", "role": "assistant"}]


def test_raw_prompts_are_not_chat_json():
    assert chat_messages("[INST]Write a story.[/INST]Here it is:\n\n") is None
    assert chat_messages('[{"not": "a message"}]') is None
    assert chat_messages("<|im_start|>user\nWrite a story.") is None
