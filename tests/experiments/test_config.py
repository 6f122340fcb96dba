"""Every config composes; every bad value fails at composition with a clear message."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from experiments.config import ConfigError
from experiments.generate import to_typed, validate_composed
from experiments.run import validate

from .conftest import CONF

GROUP_OPTIONS = {
    group: sorted(path.stem for path in (CONF / group).glob("*.yaml"))
    for group in ("backend", "sampling", "prompt", "experiment")
}


# The server backend's default (llama.cpp's server) cannot continue the default
# prompt's assistant prefix through its chat endpoint; it sends the paper's raw prompt.
NEEDED_WITH = {("backend", "openai"): ["prompt=paper_llama2_raw"]}


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUP_OPTIONS.items() for o in options])
def test_every_config_composes_and_validates(compose_config, group, option):
    cfg = compose_config(f"{group}={option}", *NEEDED_WITH.get((group, option), []))
    validate_composed(cfg)


def test_paper_experiment_is_the_papers_design(compose_config):
    cfg = compose_config("experiment=paper")
    typed = to_typed(cfg)
    assert typed.sampling.top_k == 50 and typed.sampling.top_p == 1.0
    assert typed.sampling.repetition_penalty == 1.0 and typed.sampling.n == 100
    assert typed.sampling.max_tokens == 4096
    assert typed.prompt.messages == [{"role": "user", "content": "Write a story."}]
    assert typed.prompt.assistant_prefix == "Here it is:\n\n"


def test_paper_grid_is_numpy_linspace(compose_config):
    import numpy as np
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper"], return_hydra_config=True)
    values = [float(v) for v in cfg.hydra.sweeper.params["sampling.temperature"].split(",")]
    assert values == list(np.linspace(0.001, 2.0, 7))


def test_demo_inherits_the_paper_design(compose_config):
    typed = to_typed(compose_config("experiment=demo"))
    assert (typed.sampling.top_k, typed.sampling.n, typed.sampling.max_tokens) == (50, 4, 200)
    assert typed.out_dir == "outputs/demo"


@pytest.mark.parametrize("override,field,allowed", [
    ("sampling.temperature=-0.1", "sampling.temperature", ">= 0"),
    ("sampling.top_p=0", "sampling.top_p", "(0, 1]"),
    ("sampling.top_p=1.5", "sampling.top_p", "(0, 1]"),
    ("sampling.top_k=-1", "sampling.top_k", ">= 0"),
    ("sampling.min_p=1.5", "sampling.min_p", "[0, 1]"),
    ("sampling.min_p=-0.1", "sampling.min_p", "[0, 1]"),
    ("sampling.n=0", "sampling.n", ">= 1"),
    ("sampling.max_tokens=0", "sampling.max_tokens", ">= 1"),
    ("sampling.typical_p=0", "sampling.typical_p", "(0, 1]"),
    ("sampling.presence_penalty=3", "sampling.presence_penalty", "[-2, 2]"),
    ("sampling.mirostat_mode=3", "sampling.mirostat_mode", "0, 1 or 2"),
    ("backend.batch_size=0", "backend.batch_size", ">= 1"),
])
def test_out_of_range_values_name_field_value_and_what_is_allowed(compose_config, override, field, allowed):
    cfg = compose_config(override)
    with pytest.raises(ConfigError) as error:
        to_typed(cfg)
    message = str(error.value)
    assert field in message and allowed in message
    assert override.split("=")[1] in message or str(float(override.split("=")[1])) in message


def test_top_k_must_be_an_integer(compose_config):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("sampling.top_k=2.5")
    assert "sampling.top_k" in str(error.value.__cause__) or "top_k" in str(error.value)


@pytest.mark.parametrize("override", ["sampling.temprature=1.0", "backend.batchsize=3", "unknown_key=1"])
def test_unknown_keys_fail_at_composition(compose_config, override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as error:
        compose_config(override)
    key = override.split("=")[0].split(".")[-1]
    assert key in str(error.value) + str(error.value.__cause__)


@pytest.mark.parametrize("backend,override,parameter", [
    ("hf", "sampling.mirostat_mode=2", "mirostat_mode"),
    ("hf", "sampling.grammar='root ::= \"a\"'", "grammar"),
])
def test_a_parameter_the_backend_cannot_honour_is_an_error(compose_config, backend, override, parameter):
    typed = to_typed(compose_config(f"backend={backend}", override))
    with pytest.raises(ConfigError) as error:
        validate(typed)
    assert parameter in str(error.value) and repr(backend) in str(error.value)


def test_neutral_values_need_no_support(compose_config):
    # top_p 1.0 and top_k 0 change nothing, so any backend accepts them.
    validate(to_typed(compose_config("backend=hf", "sampling.top_p=1.0", "sampling.top_k=0")))


def test_prompt_needs_exactly_one_of_raw_or_messages(compose_config):
    with pytest.raises(ConfigError, match="exactly one of prompt.raw or prompt.messages"):
        to_typed(compose_config("prompt=paper", "prompt.raw=hello"))
