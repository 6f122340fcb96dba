"""sampling.json_schema and sampling.top_logprobs: what each server profile is sent, what a response's
per-token alternatives become, what a setting may hold, and the alternatives the in-process llamacpp backend
records on the real embedded model.

A schema travels as each server takes it: OpenAI's and vLLM's ``response_format`` (strict), llama-server's
``json_schema`` object, llama-cpp-python's server a GBNF grammar made by llama.cpp's own converter. Ollama
takes neither, and is refused before any request rather than ignoring the fields.
"""

from __future__ import annotations

import json
import math

import httpx2
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from experiments.backends.base import StoryRequest
from experiments.backends.openai_profiles import profile_of, request_parameters, unaccepted_parameters
from experiments.backends.openai_requests import send, story_from_response, token_alternatives
from experiments.config import ConfigError, Endpoint, GenerateConfigError, SamplingConfig

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
          "required": ["score"], "additionalProperties": False}
SCHEMA_TEXT = json.dumps(SCHEMA)
WITH_BOTH = SamplingConfig(json_schema=SCHEMA_TEXT, top_logprobs=5, max_tokens=16)
SCHEMA_ONLY = SamplingConfig(json_schema=SCHEMA_TEXT, max_tokens=16)
REQUEST = StoryRequest(story_id="j0", sample_index=0, seed=3, prompt='[{"content":"Rate it.","role":"user"}]')

# ---------------------------------------------------------------- what each profile is sent

STRICT_RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("profile", ["openai", "vllm"])
def test_openai_and_vllm_get_the_schema_as_a_strict_response_format(profile):
    assert unaccepted_parameters(profile_of(profile), WITH_BOTH) == []
    parameters = request_parameters(profile_of(profile), WITH_BOTH, Endpoint.chat, logprobs=False)
    assert parameters.standard["response_format"] == STRICT_RESPONSE_FORMAT  # an OpenAI field: a client keyword
    assert "response_format" not in parameters.extra_body and "json_schema" not in parameters.sent()
    assert parameters.alternatives  # the response's alternatives are read


def test_llama_server_gets_the_schema_as_its_json_schema_object_in_extra_body():
    assert unaccepted_parameters(profile_of("llamacpp_server"), WITH_BOTH) == []
    parameters = request_parameters(profile_of("llamacpp_server"), WITH_BOTH, Endpoint.chat, logprobs=False)
    assert parameters.extra_body["json_schema"] == SCHEMA  # the object itself, not JSON text
    assert "response_format" not in parameters.sent() and "grammar" not in parameters.sent()
    assert parameters.alternatives


def test_llama_cpp_pythons_server_gets_llama_cpps_own_grammar_of_the_schema_and_no_alternatives():
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    profile = profile_of("llamacpp")
    assert unaccepted_parameters(profile, SCHEMA_ONLY) == []
    parameters = request_parameters(profile, SCHEMA_ONLY, Endpoint.chat, logprobs=False)
    grammar = parameters.extra_body["grammar"]
    assert isinstance(grammar, str) and grammar == json_schema_to_gbnf(SCHEMA_TEXT)
    assert "root ::=" in grammar and all(f'"{score}"' in grammar for score in range(1, 6))  # the enum is enforced
    assert "json_schema" not in parameters.sent() and "response_format" not in parameters.sent()
    # Its chat endpoint returns no alternatives: a setting asking for them is refused, not silently unanswered.
    assert unaccepted_parameters(profile, WITH_BOTH) == ["top_logprobs"]


def test_ollama_refuses_both_by_name():
    assert unaccepted_parameters(profile_of("ollama"), WITH_BOTH) == ["json_schema", "top_logprobs"]


@pytest.mark.parametrize("profile", ["openai", "vllm", "llamacpp_server"])
def test_a_setting_with_top_logprobs_asks_the_chat_endpoint_for_that_many_alternatives(profile):
    parameters = request_parameters(profile_of(profile), WITH_BOTH, Endpoint.chat, logprobs=False)
    assert parameters.standard.get("logprobs") is True and parameters.standard.get("top_logprobs") == 5
    seeded = parameters.for_story(7, profile_of(profile))
    assert seeded.alternatives and seeded.sent()["top_logprobs"] == 5


# ---------------------------------------------------------------- what a response's alternatives become

CHAT_PAYLOAD = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": '{"score": 4}'},
                 "logprobs": {"content": [
                     {"token": '{"', "logprob": -0.01, "bytes": None,
                      "top_logprobs": [{"token": '{"', "logprob": -0.01, "bytes": None},
                                       {"token": "{", "logprob": -4.6, "bytes": None}]},
                     {"token": 'score": ', "logprob": 0.0, "bytes": None, "top_logprobs": []},
                     {"token": "4", "logprob": -0.4, "bytes": None,
                      "top_logprobs": [{"token": "4", "logprob": -0.4, "bytes": None},
                                       {"token": "3", "logprob": -1.2, "bytes": None},
                                       {"token": "5", "logprob": -2.5, "bytes": None}]},
                     {"token": "}", "logprob": None, "bytes": None, "top_logprobs": None}]}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
COMPLETION_PAYLOAD = {
    "id": "c2", "object": "text_completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "length", "text": " Once upon",
                 "logprobs": {"tokens": [" Once", " upon"], "token_logprobs": [-0.25, -1.5],
                              "top_logprobs": [{" Once": -0.25, " The": -2.0}, {" upon": -1.5, " a": -1.75}],
                              "text_offset": [0, 5]}}]}


def parsed(payload: dict, endpoint: Endpoint):
    """The response as the openai client parses a server's answer in a run: leniently (a null logprob stays)."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=payload)

    client = openai.OpenAI(base_url="http://server.test/v1", api_key="k", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    parameters = request_parameters(profile_of("llamacpp_server"), WITH_BOTH, endpoint, logprobs=False)
    response = send(client, "m", endpoint, REQUEST.prompt if endpoint == Endpoint.chat else "Once", parameters)
    assert isinstance(response, ChatCompletion if endpoint == Endpoint.chat else Completion)
    return response


def test_chat_alternatives_are_each_tokens_text_logprob_and_listed_alternatives_in_order():
    choice = parsed(CHAT_PAYLOAD, Endpoint.chat).choices[0]
    tokens = token_alternatives(choice, Endpoint.chat)
    assert [token["token"] for token in tokens] == ['{"', 'score": ', "4", "}"]
    assert "".join(token["token"] for token in tokens) == choice.message.content
    assert tokens[0] == {"token": '{"', "logprob": -0.01, "top": [['{"', -0.01], ["{", -4.6]]}
    assert tokens[2]["top"] == [["4", -0.4], ["3", -1.2], ["5", -2.5]]  # as the server listed them
    assert tokens[1]["top"] == [] and tokens[3] == {"token": "}", "logprob": None, "top": []}  # none: empty


def test_completions_alternatives_come_from_the_per_token_mappings():
    choice = parsed(COMPLETION_PAYLOAD, Endpoint.completions).choices[0]
    assert token_alternatives(choice, Endpoint.completions) == [
        {"token": " Once", "logprob": -0.25, "top": [[" Once", -0.25], [" The", -2.0]]},
        {"token": " upon", "logprob": -1.5, "top": [[" upon", -1.5], [" a", -1.75]]}]


def test_a_response_without_logprobs_has_no_alternatives():
    payload = json.loads(json.dumps(CHAT_PAYLOAD))
    payload["choices"][0]["logprobs"] = None
    assert token_alternatives(parsed(payload, Endpoint.chat).choices[0], Endpoint.chat) is None
    payload["choices"][0]["logprobs"] = {"content": []}
    assert token_alternatives(parsed(payload, Endpoint.chat).choices[0], Endpoint.chat) is None
    payload = json.loads(json.dumps(COMPLETION_PAYLOAD))
    payload["choices"][0]["logprobs"] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    assert token_alternatives(parsed(payload, Endpoint.completions).choices[0], Endpoint.completions) is None


def test_a_story_keeps_the_alternatives_only_when_its_setting_asked_for_them():
    response = parsed(CHAT_PAYLOAD, Endpoint.chat)
    asked = request_parameters(profile_of("llamacpp_server"), WITH_BOTH, Endpoint.chat, logprobs=False)
    story = story_from_response(REQUEST, Endpoint.chat, response, 0.1, asked, 1)
    assert story.token_alternatives == token_alternatives(response.choices[0], Endpoint.chat)
    not_asked = request_parameters(profile_of("llamacpp_server"), SCHEMA_ONLY, Endpoint.chat, logprobs=False)
    assert story_from_response(REQUEST, Endpoint.chat, response, 0.1, not_asked, 1).token_alternatives is None


# ---------------------------------------------------------------- what a setting may hold

@pytest.mark.parametrize("schema, field", [
    ("{not json", "sampling.json_schema"),
    ("[1, 2]", "sampling.json_schema"),  # JSON, but not a schema object
    ("{}", "sampling.json_schema"),
])
def test_a_json_schema_that_is_not_a_json_object_is_refused_by_name(schema, field):
    with pytest.raises(GenerateConfigError, match=field):
        SamplingConfig(json_schema=schema)


def test_a_json_schema_and_a_grammar_together_are_refused_naming_the_grammar():
    with pytest.raises(GenerateConfigError, match=r"sampling\.grammar=.*null when sampling\.json_schema is set"):
        SamplingConfig(json_schema=SCHEMA_TEXT, grammar='root ::= "x"')


@pytest.mark.parametrize("count", [0, 21, -1])
def test_top_logprobs_outside_1_to_20_is_refused_by_name(count):
    with pytest.raises(GenerateConfigError, match=rf"sampling\.top_logprobs={count} is not allowed: an integer "
                                                   r"from 1 to 20"):
        SamplingConfig(top_logprobs=count)


def test_top_logprobs_1_and_20_and_a_valid_schema_are_accepted():
    assert SamplingConfig(top_logprobs=1).top_logprobs == 1
    assert SamplingConfig(top_logprobs=20, json_schema=SCHEMA_TEXT).json_schema == SCHEMA_TEXT


def test_the_openai_backend_refuses_a_schema_ollama_cannot_take_before_any_request():
    from experiments.backends.openai_backend import OpenAIBackend
    from experiments.config import OpenAIBackendConfig

    with pytest.raises(ConfigError, match=r"sampling\.json_schema=.*profile\(s\) that can send them: openai, vllm, "
                                          r"llamacpp, llamacpp_server"):
        OpenAIBackend.check_supported(SCHEMA_ONLY, OpenAIBackendConfig(profile="ollama"))


# ---------------------------------------------------------------- in process, on the real embedded model

PROMPT = "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\nHere it is:\n\n"


@pytest.mark.slow
def test_the_llamacpp_backend_records_each_tokens_top_alternatives_of_the_untempered_model():
    from experiments.backends.llamacpp import LlamaCppBackend
    from experiments.config import LlamaCppBackendConfig

    backend = LlamaCppBackend(LlamaCppBackendConfig(n_ctx=512))
    try:
        [story] = backend.generate([StoryRequest("s0", 0, 11, PROMPT)],
                                   SamplingConfig(temperature=1.5, max_tokens=16, top_logprobs=5))
    finally:
        backend.close()
    tokens = story.token_alternatives
    assert story.n_tokens == len(tokens) == len(story.token_logprobs) and 1 <= story.n_tokens <= 16
    # The chosen tokens' texts are the story; the alternatives' texts spell nothing in particular.
    assert "".join(token["token"] for token in tokens) == story.text
    for token, logprob in zip(tokens, story.token_logprobs):
        assert token["logprob"] == logprob  # the same number, not a recomputation
        top = [value for _, value in token["top"]]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert all(value <= 0 for value in top) and math.fsum(math.exp(v) for v in top) <= 1 + 1e-6
        # Untempered: the chosen token is among the top five exactly when it is at least as likely as the fifth.
        texts = [text for text, _ in token["top"]]
        if logprob > top[-1] + 1e-6:
            assert token["token"] in texts
        assert logprob <= top[0] + 1e-6
