"""The OpenAI-compatible backend's pure parts: profiles, request parameters, prompt routing, config checks.

No server here: tests/integration/test_openai_backend.py runs a real one. Errors and retries are tested in
tests/experiments/backends/test_openai_retry.py, request bodies in test_openai_requests.py next to it.
"""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException

from experiments.backends.base import used_parameters
from experiments.backends.openai_backend import OpenAIBackend, redact_url
from experiments.backends.openai_profiles import (PROFILES, profile_of, request_parameters,
                                                  server_defaults_in_effect, unaccepted_parameters)
from experiments.config import ConfigError, Endpoint, OpenAIBackendConfig, PromptConfig, SamplingConfig
from experiments.generate import to_typed, validate_composed

CHAT = PromptConfig(id="story", messages=[{"role": "user", "content": "Write a story."}])
CHAT_WITH_PREFIX = PromptConfig(id="paper", messages=[{"role": "user", "content": "Write a story."}],
                                assistant_prefix="Here it is:\n\n")
RAW = PromptConfig(id="raw", raw="[INST]Write a story.[/INST]Here it is:\n\n")

# One non-neutral value for every optional sampling parameter.
USED_VALUES = {
    "top_p": 0.9, "top_k": 50, "min_p": 0.05, "typical_p": 0.9, "repetition_penalty": 1.1,
    "presence_penalty": 0.5, "frequency_penalty": 0.5, "repeat_last_n": 32, "mirostat_mode": 2,
    "mirostat_tau": 3.0, "mirostat_eta": 0.2, "logit_bias": {198: -5.0}, "grammar": 'root ::= "a"', "stop": ["\n\n"],
}


def body(profile: str, endpoint: Endpoint = Endpoint.chat, logprobs: bool = True, **sampling):
    return request_parameters(profile_of(profile), SamplingConfig(**sampling), endpoint, logprobs)


def test_unset_parameters_are_sent_as_their_neutral_values_to_servers_whose_defaults_are_not():
    # llama-cpp-python's server defaults to top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1.
    params = body("llamacpp", Endpoint.completions)
    assert params.standard == {"temperature": 1.0, "max_tokens": 512, "top_p": 1.0, "presence_penalty": 0.0,
                               "frequency_penalty": 0.0, "logprobs": 1}
    assert params.extra_body == {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "mirostat_mode": 0}
    vllm = body("vllm", top_k=0)
    assert vllm.extra_body == {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}  # vLLM spells "off" -1


def test_used_parameters_travel_under_each_servers_own_names():
    llamacpp = body("llamacpp", top_k=50, repetition_penalty=1.2, grammar='root ::= "a"', mirostat_mode=2,
                    mirostat_tau=3.0)
    assert llamacpp.extra_body["top_k"] == 50 and llamacpp.extra_body["repeat_penalty"] == 1.2
    assert llamacpp.extra_body["grammar"] == 'root ::= "a"' and llamacpp.extra_body["mirostat_tau"] == 3.0
    vllm = body("vllm", top_k=50, min_p=0.1, repetition_penalty=1.2, logit_bias={198: 2.0}, stop=["."])
    assert vllm.extra_body == {"top_k": 50, "min_p": 0.1, "repetition_penalty": 1.2}
    assert vllm.standard["logit_bias"] == {"198": 2.0} and vllm.standard["stop"] == ["."]
    assert vllm.sent() == {**vllm.standard, **vllm.extra_body}


def test_openai_chat_uses_max_completion_tokens_and_sends_no_extensions():
    params = body("openai", max_tokens=64, top_k=0, repetition_penalty=1.0)
    assert params.standard == {"temperature": 1.0, "max_completion_tokens": 64, "top_p": 1.0, "logprobs": True}
    assert params.extra_body == {}
    assert body("openai", Endpoint.completions).standard["max_tokens"] == 512


def test_logprobs_are_requested_only_when_configured():
    assert "logprobs" not in body("vllm", logprobs=False).standard
    assert body("vllm", Endpoint.completions).standard["logprobs"] == 1


def test_the_per_story_seed_is_added_to_the_body():
    params = body("llamacpp")
    assert params.for_story(1234, profile_of("llamacpp")).standard["seed"] == 1234
    assert "seed" not in params.standard


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("parameter", sorted(USED_VALUES))
def test_a_profile_accepts_exactly_the_parameters_it_lists(profile, parameter):
    sampling = SamplingConfig(**{parameter: USED_VALUES[parameter]})
    assert used_parameters(sampling) == [parameter]
    backend = OpenAIBackendConfig(profile=profile)
    if parameter in PROFILES[profile].fields:
        OpenAIBackend.check_supported(sampling, backend)
        sent = request_parameters(PROFILES[profile], sampling, Endpoint.chat, True).sent()
        assert PROFILES[profile].fields[parameter].name in sent
    else:
        with pytest.raises(ConfigError) as error:
            OpenAIBackend.check_supported(sampling, backend)
        assert parameter in str(error.value) and repr(profile) in str(error.value)


def test_the_papers_setting_fits_vllm_and_llamacpp_but_not_openai_or_ollama():
    paper = SamplingConfig(temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0, max_tokens=4096, n=100)
    assert unaccepted_parameters(profile_of("vllm"), paper) == []
    assert unaccepted_parameters(profile_of("llamacpp"), paper) == []
    assert unaccepted_parameters(profile_of("openai"), paper) == ["top_k"]
    assert unaccepted_parameters(profile_of("ollama"), paper) == ["top_k"]


def test_server_defaults_that_apply_are_named():
    assert "top_k" in server_defaults_in_effect(profile_of("ollama"), SamplingConfig())
    assert server_defaults_in_effect(profile_of("llamacpp"), SamplingConfig()) == []
    assert server_defaults_in_effect(profile_of("llamacpp"), SamplingConfig(repetition_penalty=1.2)) == ["repeat_last_n"]


def test_endpoint_auto_routes_messages_to_chat_and_a_raw_prompt_to_completions():
    backend = OpenAIBackendConfig(profile="vllm")
    assert OpenAIBackend.endpoint_for(CHAT, backend) == Endpoint.chat
    assert OpenAIBackend.endpoint_for(RAW, backend) == Endpoint.completions


@pytest.mark.parametrize("prompt,overrides,message", [
    (RAW, {"endpoint": "chat"}, "only the completions endpoint"),
    (CHAT, {"endpoint": "completions"}, "has chat messages"),
    (CHAT_WITH_PREFIX, {"profile": "llamacpp"}, "cannot continue"),
    (CHAT_WITH_PREFIX, {"profile": "openai"}, "cannot continue"),
])
def test_a_prompt_the_server_cannot_take_as_configured_is_refused(prompt, overrides, message):
    with pytest.raises(ConfigError, match=message):
        OpenAIBackend.check_prompt(prompt, OpenAIBackendConfig(**overrides))


def test_the_stored_prompt_is_exactly_what_is_sent():
    vllm = OpenAIBackend(OpenAIBackendConfig(profile="vllm", model="m"))
    OpenAIBackend.check_prompt(CHAT_WITH_PREFIX, vllm.config)  # vLLM continues the assistant's turn
    sent = json.loads(vllm.prompt_text(CHAT_WITH_PREFIX))
    assert sent == [{"role": "user", "content": "Write a story."}, {"role": "assistant", "content": "Here it is:\n\n"}]
    assert vllm.prompt_text(RAW) == RAW.raw
    prefill = request_parameters(profile_of("vllm"), SamplingConfig(), Endpoint.chat, True, prefill=True)
    assert prefill.extra_body["continue_final_message"] is True and prefill.extra_body["add_generation_prompt"] is False


def test_building_the_backend_touches_no_network_and_its_identity_is_stable():
    config = OpenAIBackendConfig(base_url="http://user:pw@127.0.0.1:9/v1/?key=abc", model="m")
    first, second = OpenAIBackend(config).identity(), OpenAIBackend(config).identity()
    assert first["sha256"] == second["sha256"] and len(first["sha256"]) == 64
    assert first["base_url"] == "http://127.0.0.1:9/v1" and first["model"] == "m"
    other = OpenAIBackend(OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1", model="n")).identity()
    assert other["sha256"] != first["sha256"]
    assert OpenAIBackend(config).chat_metadata() is None


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://me:secret@api.example.com:8443/v1/?api-key=k") == "https://api.example.com:8443/v1"


def test_the_yaml_composes_and_typos_fail_at_composition(compose_config):
    typed = to_typed(compose_config("backend=openai", "prompt=paper_llama2_raw"))
    assert typed.backend.profile == "llamacpp" and typed.backend.endpoint == Endpoint.auto
    validate_composed(compose_config("backend=openai", "prompt=paper", "prompt.assistant_prefix=''"))
    with pytest.raises(ConfigCompositionException):
        compose_config("backend=openai", "backend.profile=olama")
    with pytest.raises(ConfigCompositionException):
        compose_config("backend=openai", "backend.api_key=sk-oops")


def test_validation_refuses_the_paper_prefix_on_llamacpp_chat_and_top_k_on_openai(compose_config):
    with pytest.raises(ConfigError, match="assistant_prefix"):
        validate_composed(compose_config("backend=openai", "prompt=paper"))
    with pytest.raises(ConfigError, match="top_k=50"):
        validate_composed(compose_config("backend=openai", "backend.profile=openai", "prompt=paper_llama2_raw",
                                         "sampling.top_k=50"))


@pytest.mark.parametrize("override,field", [
    ("backend.base_url=localhost:8000", "backend.base_url"),
    ("backend.max_concurrency=0", "backend.max_concurrency"),
    ("backend.requests_per_minute=0", "backend.requests_per_minute"),
    ("backend.backoff_max_s=0.1", "backend.backoff_max_s"),
    ("backend.model=' '", "backend.model"),
])
def test_out_of_range_backend_values_name_the_field(compose_config, override, field):
    with pytest.raises(ConfigError, match=field):
        to_typed(compose_config("backend=openai", "prompt=paper_llama2_raw", override))


def test_a_key_pasted_as_the_variable_name_is_refused_without_being_echoed(compose_config):
    with pytest.raises(ConfigError) as error:
        to_typed(compose_config("backend=openai", "prompt=paper_llama2_raw", "backend.api_key_env=sk-SECRET-1"))
    assert "NAME of an environment variable" in str(error.value) and "SECRET" not in str(error.value)
