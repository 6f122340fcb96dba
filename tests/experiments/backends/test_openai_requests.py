"""experiments/backends/openai_requests.py: the body a story's request carries, and the story its response gives.

The openai client is real; its transport is httpx's MockTransport, so the
JSON body is read as a server would receive it, with no socket.
"""

from __future__ import annotations

import json
import math

import httpx2
import openai
import pytest

from experiments.backends.base import StoryRequest
from experiments.backends.openai_profiles import profile_of, request_parameters
from experiments.backends.openai_requests import (continues_assistant, endpoint_for, prompt_text, send,
                                                  settings_differing, story_from_response)
from experiments.identity import canonical_json
from experiments.config import Endpoint, OpenAIBackendConfig, PromptConfig, SamplingConfig

MESSAGES = [{"role": "user", "content": "Write a story."}]
CHAT = PromptConfig(id="story", messages=MESSAGES)
PREFIXED = PromptConfig(id="paper", messages=MESSAGES, assistant_prefix="Here it is:\n\n")
RAW = PromptConfig(id="raw", raw="[INST]Write a story.[/INST]Here it is:\n\n")
REQUEST = StoryRequest(story_id="s0", sample_index=0, seed=7, prompt="p")

CHAT_RESPONSE = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "m-2026", "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Once."},
                 "logprobs": {"content": [{"token": "Once", "logprob": -0.5, "bytes": None, "top_logprobs": []},
                                          {"token": ".", "logprob": -1.0, "bytes": None, "top_logprobs": []}]}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
COMPLETION_RESPONSE = {
    "id": "c2", "object": "text_completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "length", "text": " Once upon",
                 "logprobs": {"tokens": [" Once", " upon", "?"], "token_logprobs": [-0.25, None, -2.0],
                              "top_logprobs": None, "text_offset": [0, 5, 10]}}]}


def client_receiving(bodies: list, response: dict) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx2.Response(200, json=response)

    return openai.OpenAI(base_url="http://server.test/v1", api_key="k", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_a_chat_body_is_the_model_the_messages_and_every_parameter_under_the_servers_name():
    parameters = request_parameters(profile_of("vllm"), SamplingConfig(top_k=50, max_tokens=16), Endpoint.chat,
                                    True).for_story(7, profile_of("vllm"))
    bodies: list = []
    send(client_receiving(bodies, CHAT_RESPONSE), "m", Endpoint.chat, prompt_text(CHAT, Endpoint.chat), parameters)
    [(path, body)] = bodies
    assert path == "/v1/chat/completions"
    assert body == {"model": "m", "messages": MESSAGES, "temperature": 1.0, "max_tokens": 16, "top_p": 1.0,
                    "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": True, "seed": 7,
                    "top_k": 50, "min_p": 0.0, "repetition_penalty": 1.0}
    assert body == {"model": "m", "messages": MESSAGES, **parameters.sent()}  # what the story records


def test_a_completions_body_carries_the_raw_prompt_verbatim():
    parameters = request_parameters(profile_of("llamacpp"), SamplingConfig(max_tokens=8), Endpoint.completions, True)
    bodies: list = []
    send(client_receiving(bodies, COMPLETION_RESPONSE), "m", Endpoint.completions,
         prompt_text(RAW, Endpoint.completions), parameters)
    [(path, body)] = bodies
    assert path == "/v1/completions" and body["prompt"] == RAW.raw and "messages" not in body
    assert body == {"model": "m", "prompt": RAW.raw, **parameters.sent()}
    assert body["repeat_penalty"] == 1.0 and body["logprobs"] == 1 and "seed" not in body


def test_openais_own_api_gets_no_extension_fields():
    parameters = request_parameters(profile_of("openai"), SamplingConfig(max_tokens=4), Endpoint.chat, False)
    bodies: list = []
    send(client_receiving(bodies, CHAT_RESPONSE), "gpt", Endpoint.chat, prompt_text(CHAT, Endpoint.chat), parameters)
    assert bodies[0][1] == {"model": "gpt", "messages": MESSAGES, "temperature": 1.0, "max_completion_tokens": 4,
                            "top_p": 1.0}


def test_the_prompt_sent_is_the_prompt_stored():
    assert prompt_text(RAW, Endpoint.completions) == RAW.raw
    assert prompt_text(CHAT, Endpoint.chat) == '[{"content":"Write a story.","role":"user"}]'
    prefixed = prompt_text(PREFIXED, Endpoint.chat)
    assert json.loads(prefixed) == [*MESSAGES, {"role": "assistant", "content": "Here it is:\n\n"}]
    assert continues_assistant(prefixed, Endpoint.chat) and not continues_assistant(prompt_text(CHAT, Endpoint.chat),
                                                                                     Endpoint.chat)
    assert not continues_assistant(RAW.raw, Endpoint.completions)  # a raw prompt is not JSON, and not read


@pytest.mark.parametrize("endpoint,prompt,expected", [
    ("auto", CHAT, Endpoint.chat), ("auto", RAW, Endpoint.completions),
    ("chat", RAW, Endpoint.chat), ("completions", CHAT, Endpoint.completions),
])
def test_endpoint_auto_follows_the_prompts_form_and_an_explicit_one_is_kept(endpoint, prompt, expected):
    assert endpoint_for(prompt, OpenAIBackendConfig(endpoint=endpoint)) == expected


def received(endpoint: Endpoint, payload: dict, logprobs: bool = True, profile: str = "vllm"):
    """(parameters, response) as the openai client parses a server's answer (leniently, as in a run)."""
    parameters = request_parameters(profile_of(profile), SamplingConfig(), endpoint, logprobs)
    text = prompt_text(CHAT if endpoint == Endpoint.chat else RAW, endpoint)
    return parameters, send(client_receiving([], payload), "m", endpoint, text, parameters)


def test_a_chat_response_gives_text_logprobs_tokens_and_what_the_server_ran():
    parameters, answer = received(Endpoint.chat, CHAT_RESPONSE)
    story = story_from_response(REQUEST, Endpoint.chat, answer, 0.5, parameters, 2)
    assert (story.text, story.n_tokens, story.finish_reason, story.token_logprobs) == ("Once.", 2, "stop",
                                                                                         [-0.5, -1.0])
    assert story.latency_s == 0.5 and story.sent_parameters == parameters.sent() and story.request is REQUEST
    assert story.server_response == {"model": "m-2026", "system_fingerprint": "fp_1", "attempts": 2}


def test_a_completions_response_without_usage_counts_its_logprobs_and_keeps_a_missing_one_as_nan():
    parameters, answer = received(Endpoint.completions, COMPLETION_RESPONSE, profile="llamacpp")
    story = story_from_response(REQUEST, Endpoint.completions, answer, 1.0, parameters, 1)
    assert story.text == " Once upon" and story.finish_reason == "length" and story.n_tokens == 3
    assert story.token_logprobs[0] == -0.25 and math.isnan(story.token_logprobs[1]) and story.token_logprobs[2] == -2.0
    assert story.server_response == {"model": "m", "system_fingerprint": None, "attempts": 1}


def test_a_chat_response_without_logprobs_content_or_finish_reason():
    bare = {**CHAT_RESPONSE, "choices": [{"index": 0, "finish_reason": None,
                                          "message": {"role": "assistant", "content": None}, "logprobs": None}],
            "usage": None}
    parameters, answer = received(Endpoint.chat, bare, logprobs=False)
    story = story_from_response(REQUEST, Endpoint.chat, answer, 0.1, parameters, 1)
    assert (story.text, story.n_tokens, story.finish_reason, story.token_logprobs) == ("", 0, "unknown", None)


def test_llama_server_echoes_what_it_applied_and_a_clamped_value_is_caught():
    sent = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12, "top_k": 0, "logprobs": True, "verbose": True}
    # llama-server keeps floats in single precision and reports max_tokens as n_predict.
    applied = {"temperature": 1.0, "top_p": 0.949999988079071, "n_predict": 12, "top_k": 40, "n_probs": 1}
    assert settings_differing(sent, applied) == {"top_k": {"sent": 0, "applied": 40}}


def test_llama_server_returns_the_continued_message_whole_and_the_story_is_what_follows_the_prefix():
    profile = profile_of("llamacpp_server")
    messages = [{"role": "user", "content": "Write a story."}, {"role": "assistant", "content": "Once upon"}]
    request = StoryRequest(story_id="s", sample_index=0, seed=1, prompt=canonical_json(messages))
    parameters = request_parameters(profile, SamplingConfig(), Endpoint.chat, True, prefill=True)
    assert parameters.extra_body["continue_final_message"] is True and parameters.extra_body["verbose"] is True
    assert parameters.standard["top_logprobs"] == 1  # not llama-server's 20 alternatives per token
    payload = json.loads(json.dumps(CHAT_RESPONSE))
    payload["choices"][0]["message"]["content"] = "Once upon a time."
    payload["__verbose"] = {"generation_settings": {"temperature": 1.0, "top_k": 0, "n_predict": 512}}
    answer = send(client_receiving([], payload), "m", Endpoint.chat, request.prompt, parameters)
    story = story_from_response(request, Endpoint.chat, answer, 0.1, parameters, 1, profile)
    assert story.text == " a time."
    assert story.server_response["applied"] == {"temperature": 1.0, "top_k": 0, "n_predict": 512}
    assert story.server_response["applied_differs"] == {}


def test_a_llama_server_body_carries_the_creative_samplers_and_the_order_as_json():
    profile = profile_of("llamacpp_server")
    sampling = SamplingConfig(xtc_probability=0.5, top_n_sigma=2.0, dry_multiplier=0.8, dynatemp_range=0.5,
                              sampler_order=["dry", "temperature", "top_n_sigma", "xtc"], max_tokens=32)
    parameters = request_parameters(profile, sampling, Endpoint.chat, True).for_story(7, profile)
    bodies: list = []
    send(client_receiving(bodies, CHAT_RESPONSE), "m", Endpoint.chat, prompt_text(CHAT, Endpoint.chat), parameters)
    [(_, body)] = bodies
    assert body == {"model": "m", "messages": MESSAGES, **parameters.sent()}
    assert {name: body[name] for name in ("xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier",
                                          "dry_base", "dry_allowed_length", "dry_penalty_last_n",
                                          "dry_sequence_breakers", "dynatemp_range", "dynatemp_exponent",
                                          "samplers")} == {
        "xtc_probability": 0.5, "xtc_threshold": 0.1, "top_n_sigma": 2.0, "dry_multiplier": 0.8, "dry_base": 1.75,
        "dry_allowed_length": 2, "dry_penalty_last_n": 32, "dry_sequence_breakers": ["\n", ":", '"', "*"],
        "dynatemp_range": 0.5, "dynatemp_exponent": 1.0, "samplers": ["dry", "temperature", "top_n_sigma", "xtc"]}


def test_llama_servers_echo_of_the_order_and_the_breakers_is_checked_as_lists():
    sent = {"xtc_threshold": 0.1, "top_n_sigma": -1.0, "dry_sequence_breakers": ["\n", "."],
            "samplers": ["dry", "typ_p", "temperature"]}
    # As b11434 echoes them: floats in single precision, the order as sampler names, the breakers as strings.
    same = {"xtc_threshold": 0.10000000149011612, "top_n_sigma": -1.0, "dry_sequence_breakers": ["\n", "."],
            "samplers": ["dry", "typ_p", "temperature"]}
    assert settings_differing(sent, same) == {}
    # A name llama-server does not know it drops with a log line only; the echo shows it.
    dropped = {**same, "samplers": ["dry", "temperature"], "dry_sequence_breakers": ["\n", ":", '"', "*"]}
    assert settings_differing(sent, dropped) == {
        "samplers": {"sent": ["dry", "typ_p", "temperature"], "applied": ["dry", "temperature"]},
        "dry_sequence_breakers": {"sent": ["\n", "."], "applied": ["\n", ":", '"', "*"]}}
    reordered = {**same, "samplers": ["typ_p", "dry", "temperature"]}
    assert list(settings_differing(sent, reordered)) == ["samplers"]
