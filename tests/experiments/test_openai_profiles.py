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
from experiments import samplers
from experiments.backends.openai_profiles import (PROFILES, profile_of, request_parameters, resolved_parameters,
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
    "xtc_probability": 0.5, "xtc_threshold": 0.2, "top_n_sigma": 1.5, "dry_multiplier": 0.8, "dry_base": 2.0,
    "dry_allowed_length": 3, "dry_penalty_last_n": 128, "dry_sequence_breakers": ["\n"], "dynatemp_range": 0.5,
    "dynatemp_exponent": 2.0, "sampler_order": ["temperature", "top_k", "min_p"],
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


# ---- the samplers made for creative text, and the order ---------------------------------------------------

CREATIVE = samplers.CREATIVE_PARAMETERS + ("sampler_order",)
# The fields llama-server is sent for them, as it spells them.
LLAMA_SERVER_CREATIVE_FIELDS = ("xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier", "dry_base",
                                "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "dynatemp_range",
                                "dynatemp_exponent", "samplers")
DEFAULT_ORDER_ON_THE_WIRE = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                             "temperature"]


def creative_sent(**sampling) -> dict:
    """What llama-server is sent for the creative samplers and the order (the rest is tested above)."""
    sent = body("llamacpp_server", **sampling).sent()
    return {name: sent[name] for name in LLAMA_SERVER_CREATIVE_FIELDS if name in sent}


def test_a_setting_without_them_sends_llama_server_every_sampler_off_and_its_default_order():
    # llama-server's own defaults are off too, but a server started with --xtc-probability, --dry-multiplier,
    # --top-n-sigma, --dynatemp-range or --samplers would otherwise run them.
    assert creative_sent() == {"xtc_probability": 0.0, "top_n_sigma": -1.0, "dry_multiplier": 0.0,
                               "dynatemp_range": 0.0, "samplers": DEFAULT_ORDER_ON_THE_WIRE}
    assert creative_sent(xtc_probability=0.0, dry_multiplier=0.0, dynatemp_range=0.0) == creative_sent()


@pytest.mark.parametrize("setting, expected", [
    # Each sampler on, its other values unset: the harness's defaults (llama.cpp's) are sent with it.
    ({"xtc_probability": 0.5}, {"xtc_probability": 0.5, "xtc_threshold": 0.1}),
    ({"xtc_probability": 1.0, "xtc_threshold": 0.3}, {"xtc_probability": 1.0, "xtc_threshold": 0.3}),
    ({"top_n_sigma": 1.5}, {"top_n_sigma": 1.5}),
    ({"dry_multiplier": 0.8}, {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
                               "dry_penalty_last_n": 512, "dry_sequence_breakers": ["\n", ":", '"', "*"]}),
    ({"dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 4, "dry_penalty_last_n": 100,
      "dry_sequence_breakers": ["."]},
     {"dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 4, "dry_penalty_last_n": 100,
      "dry_sequence_breakers": ["."]}),
    ({"dynatemp_range": 0.5}, {"dynatemp_range": 0.5, "dynatemp_exponent": 1.0}),
    ({"dynatemp_range": 0.5, "dynatemp_exponent": 2.0}, {"dynatemp_range": 0.5, "dynatemp_exponent": 2.0}),
])
def test_a_sampler_that_is_on_travels_to_llama_server_with_every_value_it_runs_with(setting, expected):
    off = {"xtc_probability": 0.0, "top_n_sigma": -1.0, "dry_multiplier": 0.0, "dynatemp_range": 0.0}
    assert creative_sent(**setting) == {**off, **expected, "samplers": DEFAULT_ORDER_ON_THE_WIRE}


def test_what_llama_server_is_sent_is_what_the_in_process_backends_run():
    sampling = SamplingConfig(xtc_probability=0.4, top_n_sigma=2.0, dry_multiplier=0.5, dry_penalty_last_n=256,
                              dynatemp_range=0.3, max_tokens=64)
    sent = body("llamacpp_server", xtc_probability=0.4, top_n_sigma=2.0, dry_multiplier=0.5, dry_penalty_last_n=256,
                dynatemp_range=0.3, max_tokens=64).sent()
    xtc, dry, dynatemp = samplers.xtc(sampling), samplers.dry(sampling), samplers.dynatemp(sampling)
    assert (sent["xtc_probability"], sent["xtc_threshold"]) == (xtc.probability, xtc.threshold)
    assert (sent["dry_multiplier"], sent["dry_base"], sent["dry_allowed_length"], sent["dry_penalty_last_n"],
            tuple(sent["dry_sequence_breakers"])) == (dry.multiplier, dry.base, dry.allowed_length, dry.penalty_last_n,
                                                      dry.sequence_breakers)
    assert (sent["dynatemp_range"], sent["dynatemp_exponent"]) == (dynatemp.range, dynatemp.exponent)
    assert sent["samplers"] == [samplers.LLAMA_SERVER_NAMES[name] for name in samplers.order(sampling)]
    resolved = resolved_parameters(sampling)
    assert resolved["xtc_threshold"] == samplers.XTC_THRESHOLD and resolved["sampler_order"] == list(samplers.DEFAULT_ORDER)


def test_dry_over_the_whole_story_is_sent_as_a_window_of_max_tokens():
    # llama-server refuses -1 (HTTP 400: its range starts at 0), and llama.cpp's DRY would read -1 as 0, off.
    assert creative_sent(dry_multiplier=0.8, max_tokens=64)["dry_penalty_last_n"] == 64
    assert creative_sent(dry_multiplier=0.8, dry_penalty_last_n=-1, max_tokens=300)["dry_penalty_last_n"] == 300
    assert creative_sent(dry_multiplier=0.8, dry_penalty_last_n=32, max_tokens=300)["dry_penalty_last_n"] == 32
    # A window of 0 turns DRY off: sent as it is, with nothing filled in.
    assert creative_sent(dry_multiplier=0.8, dry_penalty_last_n=0) == {
        "xtc_probability": 0.0, "top_n_sigma": -1.0, "dry_multiplier": 0.8, "dry_penalty_last_n": 0,
        "dynatemp_range": 0.0, "samplers": DEFAULT_ORDER_ON_THE_WIRE}


def test_a_custom_order_travels_in_llama_servers_names():
    order = ["temperature", "typical_p", "penalties", "min_p", "xtc", "dry", "top_n_sigma"]
    sent = creative_sent(temperature=1.5, typical_p=0.9, repetition_penalty=1.1, min_p=0.1, xtc_probability=0.5,
                         dry_multiplier=0.8, top_n_sigma=2.0, sampler_order=order)
    # typical_p is typ_p there; penalties is one of its names too (common_sampler_types_from_names, b11434).
    assert sent["samplers"] == ["temperature", "typ_p", "penalties", "min_p", "xtc", "dry", "top_n_sigma"]
    assert set(samplers.LLAMA_SERVER_NAMES.values()) == {"penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p",
                                                         "min_p", "xtc", "temperature"}
    assert creative_sent(sampler_order=["temperature", "top_k", "min_p"])["samplers"] == ["temperature", "top_k",
                                                                                           "min_p"]


@pytest.mark.parametrize("profile", ["vllm", "openai", "ollama", "llamacpp"])
@pytest.mark.parametrize("parameter", CREATIVE)
def test_every_other_server_refuses_each_of_them_by_name_value_and_what_it_sends(profile, parameter):
    sampling = SamplingConfig(**{parameter: USED_VALUES[parameter]})
    assert unaccepted_parameters(profile_of(profile), sampling) == [parameter]
    with pytest.raises(ConfigError) as error:
        OpenAIBackend.check_supported(sampling, OpenAIBackendConfig(profile=profile))
    message = str(error.value)
    assert f"sampling.{parameter}={USED_VALUES[parameter]!r}" in message and f"profile {profile!r}" in message
    sends = message.split(f"profile {profile!r} sends: ")[1].split(";")[0].split(", ")
    assert sorted(sends) == sorted(set(PROFILES[profile].fields) | {"temperature", "max_tokens", "seed"})
    assert message.endswith("profile(s) that can send them: llamacpp_server")


def test_a_refusal_names_every_parameter_it_cannot_send():
    sampling = SamplingConfig(top_k=50, xtc_probability=0.5, dynatemp_range=0.5,
                              sampler_order=["top_k", "xtc", "temperature"])
    with pytest.raises(ConfigError) as error:
        OpenAIBackend.check_supported(sampling, OpenAIBackendConfig(profile="openai"))
    message = str(error.value)
    for named in ("sampling.top_k=50", "sampling.xtc_probability=0.5", "sampling.dynatemp_range=0.5",
                  "sampling.sampler_order=['top_k', 'xtc', 'temperature']"):
        assert named in message
    OpenAIBackend.check_supported(sampling, OpenAIBackendConfig(profile="llamacpp_server"))


def test_the_refusal_comes_before_any_model_loads(compose_config):
    with pytest.raises(ConfigError, match=r"sampling\.top_n_sigma=2\.0"):
        validate_composed(compose_config("backend=openai", "backend.profile=vllm", "prompt=paper_llama2_raw",
                                         "sampling.top_n_sigma=2.0"))
    validate_composed(compose_config("backend=openai", "backend.profile=llamacpp_server", "prompt=paper",
                                     "sampling.top_n_sigma=2.0", "sampling.sampler_order=[temperature,top_n_sigma]"))


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
